// Opens a deskgate session's WebRTC stream in Debian's headless Chromium and reports
// what the browser saw, as ONE JSON line on stdout (diagnostics go to stderr); writes a
// screenshot.
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules DESKGATE_CHROMIUM=WRAPPER \
//       node webrtc_view.js GATE_ORIGIN SESSION_ID TICKET OUT.png [POINTS_JSON]
//
// DESKGATE_CHROMIUM is a wrapper that runs Chromium in a network namespace with a veth
// pair (Chromium gathers no ICE candidates on a loopback-only host); this driver stays
// on the host. The page is served as if from the gate's own origin (request
// interception) and its offer POST is passed on to the real gate from here, with the
// headers the page sent (Origin included): Chromium in the namespace cannot reach the
// gate's loopback address, but its media reaches the gate's UDP sockets over the veth.
//
// What the page does: a recvonly video transceiver and an `input` data channel; waits
// for ICE gathering to complete (non-trickle); POSTs {"sdp"} to
// /api/v1/sessions/ID/webrtc?ticket=T and sets the answer; waits for a decoded frame;
// samples the video's pixels at POINTS_JSON ([[x, y], ...]); measures an idle window
// (DESKGATE_IDLE_MS, default 5000) with getStats() inbound-rtp framesReceived and
// framesDecoded; sends {"type":"pointer","x":321,"y":123,"buttons":0} on the data
// channel. Then it logs "waiting for the end of the session" on stderr and waits for a
// line on stdin (or its end) - the caller's word that it ended the session - and for
// the stream to close, and prints the report.
//
// Optional: DESKGATE_ICE_SERVERS, the ticket's ice_servers as JSON (default []).
// DESKGATE_MOTION=WIDTHxHEIGHT adds a motion phase after the pointer message: the page
// asks for that desktop size on the data channel ({"type":"resize"}), waits for video
// of that size, logs "ready for motion" and then takes stdin lines: "sample NAME"
// stores getStats() (inbound-rtp video with its timestamp, and the presented frame
// count) as report.motion.NAME and logs "sampled NAME"; "done" ends the phase.
// Every wait is bounded; the whole run stays under 90 s.
const readline = require('readline');
const { chromium } = require('playwright-core');

const [origin, session, ticket, out, pointsArg] = process.argv.slice(2);
if (!origin || !session || ticket === undefined || !out) {
  console.error('usage: webrtc_view.js GATE_ORIGIN SESSION_ID TICKET OUT.png [POINTS_JSON]');
  process.exit(2);
}
const points = JSON.parse(pointsArg || '[[16,16],[48,16],[640,360]]');
const iceServers = JSON.parse(process.env.DESKGATE_ICE_SERVERS || '[]');
const idleMs = Number(process.env.DESKGATE_IDLE_MS || 5000);
const motion = (process.env.DESKGATE_MOTION || '').split('x').map(Number);
const offerPath = `/api/v1/sessions/${session}/webrtc`;
const started = Date.now();
const log = (m) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${m}`);
const redact = (s) => String(s).split(ticket || '\u0000').join('…');

const page_html = `<!doctype html><html><body style="margin:0;background:#222">
<video id="v" autoplay muted playsinline style="display:block"></video>
<script>
const report = window.report = {
  connectionStates: [], iceConnectionStates: [], connected: false, track: false,
  dcOpen: false, dcClosed: false, videoFrames: 0, localCandidates: [], answerCandidates: [],
  offerStatus: null, answerType: null, iceServers: null, error: null,
};
const fail = (e) => { if (!report.error) report.error = String(e && e.message || e); };
const v = document.getElementById('v');
const pc = window.pc = new RTCPeerConnection({ iceServers: ${JSON.stringify(iceServers)} });
pc.onconnectionstatechange = () => {
  report.connectionStates.push(pc.connectionState);
  if (pc.connectionState === 'connected') report.connected = true;
  console.log('connection ' + pc.connectionState);
};
pc.oniceconnectionstatechange = () => report.iceConnectionStates.push(pc.iceConnectionState);
pc.ontrack = (e) => {
  report.track = true;
  v.srcObject = e.streams[0] || new MediaStream([e.track]);
  const counted = () => { report.videoFrames++; v.requestVideoFrameCallback(counted); };
  v.requestVideoFrameCallback(counted);
};
pc.addTransceiver('video', { direction: 'recvonly' });
const dc = window.dc = pc.createDataChannel('input');
dc.onopen = () => { report.dcOpen = true; console.log('data channel open'); };
dc.onclose = () => { report.dcClosed = true; console.log('data channel closed'); };
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
  const r = await fetch(${JSON.stringify(offerPath)} + '?ticket=' + encodeURIComponent(${JSON.stringify(ticket)}), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ sdp: pc.localDescription.sdp }),
  });
  report.offerStatus = r.status;
  const text = await r.text();
  if (r.status !== 200) throw new Error('the offer was answered ' + r.status + ': ' + text.slice(0, 500));
  const answer = JSON.parse(text);
  report.answerType = answer.type;
  report.iceServers = answer.ice_servers === undefined ? null : answer.ice_servers;
  report.answerCandidates = candidates(answer.sdp || '');
  await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
})().catch(fail);

window.videoStats = async () => {
  const stats = await pc.getStats();
  let found = null;
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      const codec = s.codecId && stats.get(s.codecId);
      found = {
        framesReceived: s.framesReceived || 0, framesDecoded: s.framesDecoded || 0,
        keyFramesDecoded: s.keyFramesDecoded || 0, framesDropped: s.framesDropped || 0,
        frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0,
        bytesReceived: s.bytesReceived || 0, packetsLost: s.packetsLost || 0,
        pliCount: s.pliCount || 0, firCount: s.firCount || 0, nackCount: s.nackCount || 0,
        totalDecodeTime: s.totalDecodeTime || 0, framesPerSecond: s.framesPerSecond || 0,
        timestamp: s.timestamp, presented: report.videoFrames,
        codec: codec ? codec.mimeType : null,
      };
    }
  });
  stats.forEach((s) => {
    if (found && s.type === 'remote-outbound-rtp' && s.kind === 'video') {
      found.remoteBytesSent = s.bytesSent || 0;
      found.remotePacketsSent = s.packetsSent || 0;
    }
  });
  return found;
};
window.samplePixels = (points) => {
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, 0);
  return points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
};
</script></body></html>`;

const report = { error: null };
let browser;

// The caller's lines on stdin, read from the start so none is lost between waits.
const stdinLines = [];
let stdinEnded = false;
let stdinWake = () => {};
readline.createInterface({ input: process.stdin })
  .on('line', (line) => { stdinLines.push(line); stdinWake(); })
  .on('close', () => { stdinEnded = true; stdinWake(); });

// The caller's next line, or 'eof' at the end of stdin, or 'timeout' after `ms`.
function nextLine(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), ms);
    const check = () => {
      if (stdinLines.length) resolve(stdinLines.shift());
      else if (stdinEnded) resolve('eof');
      else return;
      clearTimeout(timer);
      stdinWake = () => {};
    };
    stdinWake = check;
    check();
  });
}

// A line on stdin, or its end, or `ms` passing: the caller ended the session.
async function callerSaysEnded(ms) {
  const line = await nextLine(ms);
  return ['eof', 'timeout'].includes(line) ? line : 'line';
}

async function finish(code) {
  report.elapsedMs = Date.now() - started;
  console.log(JSON.stringify(report));
  if (browser) await browser.close().catch(() => {});
  process.exit(code);
}

// The whole run is bounded whatever hangs.
setTimeout(() => {
  report.error = report.error || 'the viewer ran out of its 88 s';
  finish(1);
}, 88000).unref();

(async () => {
  browser = await chromium.launch({
    executablePath: process.env.DESKGATE_CHROMIUM || '/usr/bin/chromium',
    timeout: 20000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // The gate cannot resolve mDNS-hidden (.local) host candidates, so the page's
      // candidates must carry the namespace's real address. The page's origin comes from
      // request interception, which Chromium treats as public: no Local Network Access
      // checks on the way to the gate's private address either.
      '--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks',
      '--autoplay-policy=no-user-gesture-required'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.on('console', (m) => log(`console.${m.type()}: ${redact(m.text())}`));
  page.on('pageerror', (e) => log(`page error: ${redact(e)}`));
  // Anything else of the gate's origin: not served (the page needs nothing else).
  await page.route(`${origin}/**`, (route) => route.fulfill({ status: 404, body: 'not served by the test' }));
  await page.route(`${origin}/viewer/index.html`, (route) =>
    route.fulfill({ body: page_html, contentType: 'text/html' }));
  // The offer goes to the real gate, from this host, as the page sent it.
  await page.route((url) => url.origin === origin && url.pathname === offerPath, async (route) => {
    const request = route.request();
    const headers = await request.allHeaders();
    log(`offer: ${request.method()} ${offerPath} (Origin ${headers.origin}, ${(request.postData() || '').length} bytes) -> the gate`);
    try {
      const response = await route.fetch({ headers, maxRedirects: 0, timeout: 20000 });
      log(`offer answered ${response.status()} ${response.headers()['content-type'] || ''}`);
      await route.fulfill({ response });
    } catch (e) {
      log(`offer pass-through failed: ${redact(e)}`);
      await route.abort('connectionfailed');
    }
  });

  const wait = async (what, fn, ms, arg = null) => {
    try {
      await page.waitForFunction(fn, arg, { timeout: ms, polling: 100 });
      return true;
    } catch (e) {
      report.error = report.error || `${what} within ${ms / 1000} s`;
      return false;
    }
  };
  const collect = async () => Object.assign(report, await page.evaluate(() => window.report), { error: report.error });
  const pageError = async () => page.evaluate(() => window.report.error);

  await page.goto(`${origin}/viewer/index.html`);
  const connected = await wait('no connection',
    () => window.report.error || window.report.connected || ['failed', 'closed'].includes(window.pc.connectionState), 20000);
  await collect();
  report.error = report.error || await pageError();
  if (!connected || report.error || !report.connected) {
    report.error = report.error || `the peer connection went ${report.connectionStates.join(' -> ')}`;
    return finish(1);
  }
  log(`connected; gate candidates ${JSON.stringify(report.answerCandidates)}`);
  if (!await wait('no decoded video frame',
    () => window.report.videoFrames > 0 && document.getElementById('v').videoWidth > 0, 15000)) {
    await collect();
    report.stats = await page.evaluate(() => window.videoStats());
    return finish(1);
  }
  // Let the first picture settle (a keyframe answered to a picture-loss request).
  await page.waitForTimeout(1000);
  report.videoSize = await page.evaluate(() => [document.getElementById('v').videoWidth, document.getElementById('v').videoHeight]);
  report.pixels = await page.evaluate((p) => window.samplePixels(p), points);
  report.points = points;
  log(`video ${report.videoSize.join('x')}, pixels ${JSON.stringify(report.pixels)}`);

  // The desktop is idle: no new frames in this window.
  const before = await page.evaluate(() => window.videoStats());
  await page.waitForTimeout(idleMs);
  const after = await page.evaluate(() => window.videoStats());
  report.idle = { ms: idleMs, before, after };
  log(`idle window: framesReceived ${before && before.framesReceived} -> ${after && after.framesReceived}`);

  report.pointerSent = await page.evaluate(() => {
    if (window.dc.readyState !== 'open') return false;
    window.dc.send(JSON.stringify({ type: 'pointer', x: 321, y: 123, buttons: 0 }));
    return true;
  });
  await page.waitForTimeout(1000);
  report.afterPointer = await page.evaluate(() => window.videoStats());
  await page.screenshot({ path: out });
  if (motion.length === 2 && motion.every((n) => n > 0)) {
    const [width, height] = motion;
    report.resizeSent = await page.evaluate(([width, height]) => {
      if (window.dc.readyState !== 'open') return false;
      window.dc.send(JSON.stringify({ type: 'resize', width, height }));
      return true;
    }, motion);
    if (!await wait(`no ${width}x${height} video after the resize`, ([w, h]) => {
      const v = document.getElementById('v');
      return v.videoWidth === w && v.videoHeight === h;
    }, 15000, motion)) {
      await collect();
      return finish(1);
    }
    report.motion = {};
    log('ready for motion (stdin: "sample NAME" ..., "done")');
    for (;;) {
      const line = await nextLine(30000);
      if (line === 'done') break;
      if (!line.startsWith('sample ')) {
        report.error = `the motion phase ended with ${JSON.stringify(line)}`;
        await collect();
        return finish(1);
      }
      const name = line.slice('sample '.length);
      report.motion[name] = await page.evaluate(() => window.videoStats());
      log(`sampled ${name}: ${JSON.stringify(report.motion[name])}`);
    }
  }
  await collect();
  // Still streaming when the caller ends the session (so a close seen later is its doing).
  report.openBeforeEnd = await page.evaluate(() => window.pc.connectionState === 'connected' && window.dc.readyState === 'open');
  log(`report so far: ${redact(JSON.stringify(report))}`);

  log('waiting for the end of the session (a line on stdin)');
  report.endSignal = await callerSaysEnded(25000);
  const endAt = Date.now();
  const closed = await wait('the stream stayed open after the session ended',
    () => ['failed', 'closed', 'disconnected'].includes(window.pc.connectionState) || window.report.dcClosed, 10000);
  report.closeMs = closed ? Date.now() - endAt : null;
  await collect();
  report.finalConnectionState = await page.evaluate(() => window.pc.connectionState);
  if (!report.error) report.error = await pageError();
  return finish(report.error ? 1 : 0);
})().catch((e) => {
  report.error = report.error || redact(e && e.stack || e);
  log(`failed: ${report.error}`);
  finish(1);
});
