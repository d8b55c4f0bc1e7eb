// A browser user of the docker compose stack (tests/compose_stack.rs): Debian's headless
// Chromium opens the gate at its published port, connects the test wallet, signs in,
// deposits on the stack's anvil, starts `small`, watches the XFCE desktop arrive over
// WebRTC (the page's own choice; the video comes from the launcher through the stack's
// TURN server), then over noVNC, opens a terminal with the keyboard and types a command
// into it.
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules \
//       node compose_stack.js PUBLIC_URL WALLET_RPC SHOTS_DIR TYPED
//
// TYPED is the shell command typed into the terminal.
//
// Stages (JSON lines on stdout; the driver waits for a line on stdin after those marked *):
//   page {status}, signed-in, credited {credit}, started,
//   webrtc {ms, size, colours, dominant, candidate}   the first WebRTC frame that is not
//       blank: ms from the click on "Start small"; colours: distinct colours on a
//       sampling grid; dominant: the share of the commonest one; candidate: the type of
//       the browser's end of the ICE pair in use. Shot: xfce-desktop-webrtc.png.
//   desktop* {ms, size, colours, dominant}   the same over noVNC, ms from picking it in
//       the Connection menu. Shot: xfce-desktop.png. The caller checks the desktop's
//       panel from the outside, then answers.
//   typed* {text}   the terminal is open (Ctrl+Alt+T, XFCE's shortcut) and TYPED + Return
//       was typed into it; the caller answers once the desktop ran it. Shot: xfce-terminal.png.
//   holding   the session is left running; the browser closes.
const path = require('path');
const { pageDriver, exposeDesktopFrame } = require('./page_driver');
const { injectWallet, DEV_ACCOUNTS } = require('./test_wallet');

const { args, log, stage, nextLine, launch, run } = pageDriver('compose_stack.js',
  ['PUBLIC_URL', 'WALLET_RPC', 'SHOTS_DIR', 'TYPED'], 240000);
const { PUBLIC_URL: publicUrl, WALLET_RPC: walletRpc, SHOTS_DIR: shots, TYPED: typed } = args;

/** Distinct colours on a 32-pixel grid of the view (video or noVNC canvas), and the commonest one's share. */
const frameStats = () => {
  const frame = window.desktopFrame();
  if (!frame) return null;
  const { ctx, w, h } = frame;
  const data = ctx.getImageData(0, 0, w, h).data;
  const counts = new Map();
  let n = 0;
  for (let y = 0; y < h; y += 32) {
    for (let x = 0; x < w; x += 32) {
      const i = (y * w + x) * 4;
      const key = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
      counts.set(key, (counts.get(key) || 0) + 1);
      n += 1;
    }
  }
  const top = Math.max(...counts.values());
  return { size: [w, h], colours: counts.size, dominant: top / n };
};

run(async () => {
  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1360, height: 1000 } });
  await injectWallet(context, walletRpc, DEV_ACCOUNTS[0], log, { knowsChain: false });
  await exposeDesktopFrame(context);
  // Keep the page's peer connections within reach, to read which candidates carry
  // the video (the page itself does not expose them).
  await context.addInitScript(() => {
    const Native = window.RTCPeerConnection;
    window.__peers = [];
    window.RTCPeerConnection = function (...a) {
      const pc = new Native(...a);
      window.__peers.push(pc);
      return pc;
    };
    window.RTCPeerConnection.prototype = Native.prototype;
  });
  const page = await context.newPage();
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e}`));
  const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`) });

  const response = await page.goto(publicUrl);
  stage('page', { status: response.status() });
  await page.getByRole('button', { name: 'Connect wallet' }).click({ timeout: 15000 });
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Signed in as').waitFor({ timeout: 20000 });
  stage('signed-in');

  await page.getByLabel('Minutes').fill('60');
  await page.getByText(/buys 1 h on small/).waitFor({ timeout: 10000 });
  await page.getByRole('button', { name: 'Deposit' }).click();
  // The stack's anvil mines a block a second and the gate waits for one confirmation.
  await page.getByTestId('deposit-status').filter({ hasText: 'Credited' }).waitFor({ timeout: 60000 });
  stage('credited', { credit: await page.getByTestId('credit').textContent() });

  /** Waits for a frame that is not blank (XFCE paints its wallpaper, panel and icons). */
  const firstFrame = async (what) => {
    const deadline = Date.now() + 90000;
    let stats;
    for (;;) {
      stats = await page.evaluate(frameStats);
      if (stats && stats.colours >= 8 && stats.dominant < 0.95) return stats;
      if (Date.now() > deadline) throw new Error(`no ${what} frame within 90 s: ${JSON.stringify(stats)}`);
      await page.waitForTimeout(50);
    }
  };

  const clicked = Date.now();
  await page.getByRole('button', { name: 'Start small' }).click();
  stage('started');
  await page.getByTestId('desktop-path').filter({ hasText: 'WebRTC' }).waitFor({ timeout: 60000 });
  await firstFrame('WebRTC');
  const webrtcMs = Date.now() - clicked;
  // Which of the browser's candidates carries the video (relay: through TURN).
  const candidate = await page.evaluate(async () => {
    const pc = window.__peers[window.__peers.length - 1];
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair;
    stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    return local ? local.candidateType : null;
  });
  await page.waitForTimeout(2000);
  await shot('xfce-desktop-webrtc');
  stage('webrtc', { ms: webrtcMs, candidate, ...(await page.evaluate(frameStats)) });

  const picked = Date.now();
  await page.getByLabel('Connection').selectOption('vnc');
  await page.getByTestId('desktop-path').filter({ hasText: 'noVNC' }).waitFor({ timeout: 60000 });
  await page.locator('.desktop-vnc canvas').waitFor({ timeout: 30000 });
  await firstFrame('noVNC');
  const ms = Date.now() - picked;
  // Give the session a moment to finish painting before the kept screenshot.
  await page.waitForTimeout(2000);
  const stats = await page.evaluate(frameStats);
  await shot('xfce-desktop');
  stage('desktop', { ms, ...stats });
  await nextLine(60000);

  // A terminal by XFCE's own shortcut, then a command typed into it.
  await page.locator('.desktop-vnc canvas').click({ position: { x: 600, y: 400 } });
  await page.keyboard.press('Control+Alt+KeyT');
  await page.waitForTimeout(4000);
  await page.keyboard.type(typed, { delay: 20 });
  await page.keyboard.press('Enter');
  stage('typed', { text: typed });
  await nextLine(60000);
  await shot('xfce-terminal');
  stage('holding');
});
