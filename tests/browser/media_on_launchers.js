// Views deskgate desktops in Debian's headless Chromium for tests/media_on_launchers.rs,
// one tab per viewer, by noVNC and by WebRTC, through the gate's public media routes only.
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules DESKGATE_CHROMIUM=WRAPPER \
//       node media_on_launchers.js PUBLIC_URL WALLET_RPC SHOTS_DIR NOVNC_DIR
//
// DESKGATE_CHROMIUM runs Chromium in the browser's network namespace, where PUBLIC_URL
// (the gate) and the launchers' WebRTC addresses are reachable. Each viewer's page is
// served as if from the gate's origin (request interception: noVNC's modules come from
// NOVNC_DIR), so its VNC socket and its offer go to the real gate with the gate's
// Origin. WALLET_RPC is unused (the harness passes it to every driver).
//
// The protocol (support/browser.rs's PageDriver): a {"stage":"ready"} line once
// Chromium runs, then one command per line on stdin, each answered by exactly one
// {"stage":"answer", "to", "name", ...} line on stdout; diagnostics go to stderr.
//
//   {"do":"open", "name", "kind":"vnc"|"webrtc", "session", "ticket"}
//       a new tab; answers once it streams (vnc: connected; webrtc: connected and a
//       frame decoded) or cannot: {ok, report}
//   {"do":"pattern", "name", "shot"}  the checkerboard of support/desktop.rs at the
//       sample points (within 8 per channel on VNC, 24 on lossy VP8), waited for up
//       to 20 s; a screenshot SHOT.png either way: {ok, size, pixels}
//   {"do":"pointer", "name", "x", "y"}  the pointer to desktop pixel (x, y): the mouse
//       over noVNC's canvas, or a pointer message on the `input` data channel
//   {"do":"frames", "name"}  a WebRTC viewer's inbound video counters and state
//   {"do":"state", "name"}   what the viewer's page knows now
//   {"do":"ended", "name", "within_ms"}  waits until the stream ended (vnc: the
//       socket closed, with its code and reason; webrtc: the peer connection left
//       'connected' or the data channel closed): {ok, ms, report}
//   {"do":"close", "name"}   closes the tab
//   {"do":"quit"}            closes the browser and ends with {"stage":"done"}
//
// Every wait is bounded; the run as a whole is bounded by page_driver.js.
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');
const { pageDriver } = require('./page_driver');

const { args, log, stage, nextLine, run } = pageDriver('media_on_launchers.js',
  ['PUBLIC_URL', 'WALLET_RPC', 'SHOTS_DIR', 'NOVNC_DIR'], 280000);
const { PUBLIC_URL: origin, SHOTS_DIR: shots, NOVNC_DIR: novncDir } = args;

// The pattern the test paints (support/desktop.rs): 32-pixel squares, FG where column +
// row is even. Samples are square centres away from the X pointer's corners.
const SQUARE = 32;
const FG = [0x00, 0x40, 0xff];
const BG = [0xff, 0x80, 0x00];
const SAMPLES = [[16, 16], [48, 16], [16, 48], [48, 48], [624, 336], [656, 336], [1232, 16], [16, 688], [1200, 656]];
const painted = (x, y) => ((Math.floor(x / SQUARE) + Math.floor(y / SQUARE)) % 2 === 0 ? FG : BG);
const TOLERANCE = { vnc: 8, webrtc: 24 };

const vncPage = (session, ticket) => `<!doctype html><html><body style="margin:0">
<div id="screen" style="width:1280px;height:720px"></div>
<script type="module">
import RFB from './core/rfb.js';
const report = window.report = { connected: false, credentialsRequired: false, disconnected: null, closed: null, error: null };
try {
  const url = location.origin.replace(/^http/, 'ws') + '/api/v1/sessions/${session}/vnc?ticket=${ticket}';
  // The socket is made here so that its Close frame (code, reason) can be seen.
  const ws = new WebSocket(url, ['binary']);
  ws.addEventListener('close', (e) => { report.closed = { code: e.code, reason: e.reason, clean: e.wasClean }; });
  const rfb = window.rfb = new RFB(document.getElementById('screen'), ws);
  rfb.addEventListener('connect', () => { report.connected = true; });
  rfb.addEventListener('credentialsrequired', () => { report.credentialsRequired = true; });
  rfb.addEventListener('disconnect', (e) => { report.disconnected = { clean: e.detail.clean }; });
} catch (e) { report.error = String(e && e.message || e); }
window.sample = (points) => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width) return null;
  const ctx = c.getContext('2d');
  return { size: [c.width, c.height], at: points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))) };
};
window.streaming = () => report.connected && !report.closed && !report.disconnected;
window.ended = () => !!(report.closed || report.disconnected || report.error);
</script></body></html>`;

const webrtcPage = (session, ticket) => `<!doctype html><html><body style="margin:0;background:#222">
<video id="v" autoplay muted playsinline style="display:block"></video>
<script>
const report = window.report = {
  connectionStates: [], connected: false, dcOpen: false, dcClosed: false, videoFrames: 0,
  localCandidates: [], answerCandidates: [], offerStatus: null, error: null,
};
const fail = (e) => { if (!report.error) report.error = String(e && e.message || e); };
const v = document.getElementById('v');
const pc = window.pc = new RTCPeerConnection({ iceServers: [] });
pc.onconnectionstatechange = () => {
  report.connectionStates.push(pc.connectionState);
  if (pc.connectionState === 'connected') report.connected = true;
};
pc.ontrack = (e) => {
  v.srcObject = e.streams[0] || new MediaStream([e.track]);
  const counted = () => { report.videoFrames++; v.requestVideoFrameCallback(counted); };
  v.requestVideoFrameCallback(counted);
};
pc.addTransceiver('video', { direction: 'recvonly' });
const dc = window.dc = pc.createDataChannel('input');
dc.onopen = () => { report.dcOpen = true; };
dc.onclose = () => { report.dcClosed = true; };
const candidates = (sdp) => sdp.split(/\\r?\\n/).filter((l) => l.startsWith('a=candidate'));
(async () => {
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve, reject) => {
    const done = () => pc.iceGatheringState === 'complete' && resolve();
    pc.addEventListener('icegatheringstatechange', done);
    done();
    setTimeout(() => reject(new Error('ICE gathering did not complete within 10 s')), 10000);
  });
  report.localCandidates = candidates(pc.localDescription.sdp);
  const r = await fetch('/api/v1/sessions/${session}/webrtc?ticket=${ticket}', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ sdp: pc.localDescription.sdp }),
  });
  report.offerStatus = r.status;
  const text = await r.text();
  if (r.status !== 200) throw new Error('the offer was answered ' + r.status + ': ' + text.slice(0, 500));
  const answer = JSON.parse(text);
  report.answerCandidates = candidates(answer.sdp || '');
  await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
})().catch(fail);
window.sample = (points) => {
  if (!v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, 0);
  return { size: [c.width, c.height], at: points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))) };
};
window.videoStats = async () => {
  const stats = await pc.getStats();
  let found = null;
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      found = { framesReceived: s.framesReceived || 0, framesDecoded: s.framesDecoded || 0,
        bytesReceived: s.bytesReceived || 0, frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0 };
    }
  });
  return found;
};
window.streaming = () => pc.connectionState === 'connected' && report.videoFrames > 0 && v.videoWidth > 0;
window.ended = () => !!report.error || report.dcClosed || ['disconnected', 'failed', 'closed'].includes(pc.connectionState);
</script></body></html>`;

const types = { '.js': 'text/javascript', '.html': 'text/html', '.css': 'text/css' };
const viewers = new Map();
let browser;
let context;

/** A page's report, with the peer connection's and data channel's states on WebRTC. */
const pageReport = (page) => page.evaluate(() => Object.assign({}, window.report, window.pc
  ? { connectionState: window.pc.connectionState, dcState: window.dc.readyState } : {}));

const viewer = (name) => {
  const found = viewers.get(name);
  if (!found) throw new Error(`no viewer ${name}`);
  return found;
};

async function open({ name, kind, session, ticket }) {
  if (viewers.has(name)) throw new Error(`viewer ${name} is open already`);
  const page = await context.newPage();
  page.on('console', (m) => log(`${name} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`${name} page error: ${e}`));
  const html = kind === 'vnc' ? vncPage(session, ticket) : webrtcPage(session, ticket);
  await page.route(`${origin}/viewer/**`, async (route) => {
    const rel = new URL(route.request().url()).pathname.replace(/^\/viewer\//, '');
    if (rel === 'index.html') return route.fulfill({ body: html, contentType: 'text/html' });
    const file = path.join(novncDir, path.normalize(rel));
    if (!file.startsWith(novncDir) || !fs.existsSync(file)) return route.fulfill({ status: 404, body: 'not found' });
    return route.fulfill({ body: fs.readFileSync(file), contentType: types[path.extname(file)] || 'application/octet-stream' });
  });
  viewers.set(name, { page, kind });
  const started = Date.now();
  await page.goto(`${origin}/viewer/index.html`);
  let ok = true;
  try {
    await page.waitForFunction(() => window.streaming && (window.streaming() || window.ended()), null, { timeout: 25000, polling: 100 });
    ok = await page.evaluate(() => window.streaming());
  } catch (e) {
    ok = false;
  }
  const report = await pageReport(page);
  log(`${name}: ${kind} ${ok ? 'streams' : 'does not stream'} after ${Date.now() - started} ms`);
  return { ok, ms: Date.now() - started, report };
}

async function pattern({ name, shot }) {
  const { page, kind } = viewer(name);
  const deadline = Date.now() + 20000;
  let pixels = null;
  let ok = false;
  for (;;) {
    pixels = await page.evaluate((s) => window.sample(s), SAMPLES);
    ok = !!pixels && pixels.size[0] === 1280 && pixels.size[1] === 720 && pixels.at.every((rgb, i) =>
      rgb.every((c, k) => Math.abs(c - painted(...SAMPLES[i])[k]) <= TOLERANCE[kind]));
    if (ok || Date.now() > deadline) break;
    await page.waitForTimeout(250);
  }
  await page.screenshot({ path: path.join(shots, `${shot}.png`) });
  return { ok, size: pixels && pixels.size, pixels: pixels && pixels.at, samples: SAMPLES };
}

async function pointer({ name, x, y }) {
  const { page, kind } = viewer(name);
  if (kind === 'webrtc') {
    const sent = await page.evaluate(([px, py]) => {
      if (window.dc.readyState !== 'open') return false;
      window.dc.send(JSON.stringify({ type: 'pointer', x: px, y: py, buttons: 0 }));
      return true;
    }, [x, y]);
    return { ok: sent };
  }
  const box = await page.evaluate(() => {
    const r = document.querySelector('#screen canvas').getBoundingClientRect();
    return { left: r.left, top: r.top };
  });
  await page.mouse.move(box.left + 5, box.top + 5);
  await page.mouse.move(box.left + x + 0.5, box.top + y + 0.5, { steps: 4 });
  return { ok: true };
}

async function frames({ name }) {
  const { page } = viewer(name);
  return { ok: true, stats: await page.evaluate(() => window.videoStats()), report: await pageReport(page) };
}

async function ended({ name, within_ms: within }) {
  const { page } = viewer(name);
  const started = Date.now();
  let ok = true;
  try {
    await page.waitForFunction(() => window.ended(), null, { timeout: within, polling: 100 });
  } catch (e) {
    ok = false;
  }
  return { ok, ms: Date.now() - started, report: await pageReport(page) };
}

async function close({ name }) {
  const { page } = viewer(name);
  viewers.delete(name);
  await page.close();
  return { ok: true };
}

const commands = {
  open, pattern, pointer, frames, ended, close,
  state: async ({ name }) => ({ ok: true, report: await pageReport(viewer(name).page) }),
};

run(async () => {
  browser = await chromium.launch({
    executablePath: process.env.DESKGATE_CHROMIUM || '/usr/bin/chromium',
    timeout: 20000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Real host candidates (the launchers' peers resolve no mDNS names); the pages
      // come from request interception, which Chromium treats as public, so no Local
      // Network Access checks on their way to the gate's private address.
      '--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks',
      // Tabs in the background keep decoding and painting.
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
      '--autoplay-policy=no-user-gesture-required'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  stage('ready');
  for (;;) {
    const line = await nextLine(120000);
    const command = JSON.parse(line);
    if (command.do === 'quit') break;
    const handler = commands[command.do];
    if (!handler) throw new Error(`unknown command ${line}`);
    const answer = await handler(command);
    stage('answer', { to: command.do, name: command.name, ...answer });
  }
  await browser.close();
});
