// Opens noVNC in Debian's headless Chromium against a deskgate VNC socket and reports
// what the browser saw, as one JSON line on stdout; writes a screenshot.
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules node novnc_view.js \
//       GATE_ORIGIN SESSION_ID TICKET NOVNC_DIR OUT.png
//
// The page and noVNC's modules are served as if from the gate's own origin (request
// interception), so the socket's Origin is the gate's public one; the WebSocket itself
// goes to the real gate. The page is never given a VNC password: if noVNC asks for
// credentials, that is reported, not answered.
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [origin, session, ticket, novncDir, out] = process.argv.slice(2);
const page_html = `<!doctype html><html><body style="margin:0">
<div id="screen" style="width:1280px;height:720px"></div>
<script type="module">
import RFB from './core/rfb.js';
window.report = { connected: false, credentialsRequired: false, disconnected: null };
const url = 'ws://' + location.host + '/api/v1/sessions/${session}/vnc?ticket=${ticket}';
const rfb = new RFB(document.getElementById('screen'), url);
rfb.addEventListener('connect', () => { window.report.connected = true; });
rfb.addEventListener('credentialsrequired', () => { window.report.credentialsRequired = true; });
rfb.addEventListener('disconnect', (e) => { window.report.disconnected = { clean: e.detail.clean }; });
</script></body></html>`;

const types = { '.js': 'text/javascript', '.html': 'text/html', '.css': 'text/css' };

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.DESKGATE_CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // The page comes from request interception, which Chromium treats as a public
      // origin; its socket to the loopback gate would hit Local Network Access checks.
      '--disable-features=LocalNetworkAccessChecks'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  await page.route(`${origin}/viewer/**`, async (route) => {
    const rel = new URL(route.request().url()).pathname.replace(/^\/viewer\//, '');
    if (rel === 'index.html') {
      return route.fulfill({ body: page_html, contentType: 'text/html' });
    }
    const file = path.join(novncDir, path.normalize(rel));
    if (!file.startsWith(novncDir) || !fs.existsSync(file)) {
      return route.fulfill({ status: 404, body: 'not found' });
    }
    return route.fulfill({ body: fs.readFileSync(file), contentType: types[path.extname(file)] || 'application/octet-stream' });
  });
  // What the page and its sockets did, for the test's failure message.
  page.on('console', (m) => console.error(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console.error(`page error: ${e}`));
  page.on('websocket', (ws) => {
    console.error(`websocket ${ws.url().replace(/ticket=[^&]*/, 'ticket=…')}`);
    ws.on('close', () => console.error('websocket closed'));
    ws.on('socketerror', (e) => console.error(`websocket error: ${e}`));
  });
  await page.goto(`${origin}/viewer/index.html`);
  // Connected, then a few frames painted (or a disconnect) within 20 s.
  await page.waitForFunction(() => window.report && (window.report.connected || window.report.disconnected),
    null, { timeout: 20000 });
  await page.waitForTimeout(1500);
  const report = await page.evaluate(() => {
    const canvas = document.querySelector('#screen canvas');
    const r = Object.assign({}, window.report);
    if (canvas) {
      const ctx = canvas.getContext('2d');
      r.size = [canvas.width, canvas.height];
      r.pixels = [[10, 10], [640, 360], [1200, 700]].map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
    }
    return r;
  });
  await page.screenshot({ path: out });
  console.log(JSON.stringify(report));
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
