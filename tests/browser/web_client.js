// Drives the gate's own page (GET /) in Debian's headless Chromium as a browser user
// would, through the page only: connect a wallet, sign in, deposit, wait for credit,
// start `small`, see the desktop take the view's size, point, click and type into
// it, pass the clipboard both ways, stop; first over WebRTC (the page's automatic choice), then
// over noVNC (picked in the page's Connection menu).
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules DESKGATE_CHROMIUM=WRAPPER \
//       node web_client.js PUBLIC_URL WALLET_RPC SHOTS_DIR
//
// The wallet is the test's own (test_wallet.js), announced through EIP-6963 like a
// browser extension, backed by the anvil node at WALLET_RPC and its dev account #0. Chromium keeps its default WebRTC privacy settings
// (host candidates behind mDNS names), as a stock browser does.
//
// Progress goes to stdout as JSON lines, {"stage": ...}; diagnostics to stderr. At
// {"stage":"pointer", "path", "x", "y", "size", "view"} (size: the desktop's pixels as
// the page shows them; view: the view's CSS pixels) the driver waits for a line on
// stdin — the caller's word that the desktop's X pointer got there — before it stops
// the desktop. At {"stage":"typed", "keysyms"} it waits for the caller's word that the
// desktop saw the click and those keys. At {"stage":"clipboard-open", "expect"} it waits for the caller to put
// `expect` on the desktop's clipboard; at {"stage":"clipboard-sent", "text"} for the
// caller's word that `text` is on it. At {"stage":"window-resized", "size"} (after
// the browser window shrank) it waits for the caller's word that the X screen has
// that size.
// Every wait is bounded.
const path = require('path');
const { pageDriver, exposeDesktopFrame } = require('./page_driver');
const { injectWallet, DEV_ACCOUNTS } = require('./test_wallet');

const { args, log, stage, nextLine, launch, run } = pageDriver('web_client.js', ['PUBLIC_URL', 'WALLET_RPC', 'SHOTS_DIR']);
const { PUBLIC_URL: publicUrl, WALLET_RPC: walletRpc, SHOTS_DIR: shots } = args;

// The pattern the caller paints on the desktop (tests/web_client.rs): 32-pixel squares,
// FG where column + row is even.
const SQUARE = 32;
const FG = [0x00, 0x40, 0xff];
const BG = [0xff, 0x80, 0x00];
const SAMPLES = [[16, 16], [48, 16], [16, 48], [48, 48], [624, 336], [656, 336], [1232, 16], [16, 688], [1200, 656]];
const painted = (x, y) => ((Math.floor(x / SQUARE) + Math.floor(y / SQUARE)) % 2 === 0 ? FG : BG);

run(async () => {
  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1360, height: 1000 } });
  // A wallet that does not know the chain yet: the page adds it (from /pricing's
  // wallet_rpc_url) and switches to it.
  await injectWallet(context, walletRpc, DEV_ACCOUNTS[0], log, { knowsChain: false });
  await exposeDesktopFrame(context);
  const page = await context.newPage();
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e}`));
  const shot = async (name) => {
    await page.screenshot({ path: path.join(shots, `${name}.png`) });
    stage('screenshot', { name });
  };

  const response = await page.goto(publicUrl);
  stage('page', { status: response.status(), csp: response.headers()['content-security-policy'] || null });
  await page.getByRole('button', { name: 'Connect wallet' }).waitFor({ timeout: 15000 });
  await shot('01-landing');

  await page.getByRole('button', { name: 'Connect wallet' }).click();
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Signed in as').waitFor({ timeout: 20000 });
  stage('signed-in');
  await shot('02-signed-in');

  await page.getByLabel('Minutes').fill('60');
  await page.getByText(/buys 1 h on small/).waitFor({ timeout: 10000 });
  await page.getByRole('button', { name: 'Deposit' }).click();
  await page.getByTestId('deposit-status').filter({ hasText: 'Credited' }).waitFor({ timeout: 30000 });
  const credit = await page.getByTestId('credit').textContent();
  stage('credited', { credit });
  await shot('03-credited');

  for (const [round, pathName] of [[1, 'WebRTC'], [2, 'noVNC']]) {
    await page.getByRole('button', { name: 'Start small' }).click();
    stage('started', { round });
    if (pathName === 'noVNC') {
      await page.getByLabel('Connection').selectOption('vnc', { timeout: 60000 });
    }
    await page.getByTestId('desktop-path').filter({ hasText: pathName }).waitFor({ timeout: 60000 });
    stage('desktop', { path: pathName });

    // The caller paints the pattern once the container runs; wait until it shows.
    const deadline = Date.now() + 30000;
    let pixels;
    for (;;) {
      pixels = await page.evaluate((samples) => {
        const frame = window.desktopFrame();
        if (!frame) return null;
        const { ctx, w, h } = frame;
        return { size: [w, h], at: samples.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3))) };
      }, SAMPLES);
      const tolerance = pathName === 'WebRTC' ? 24 : 8;
      // noVNC resizes the desktop to the view: only points inside count.
      const matches = pixels && pixels.at.every((rgb, i) => {
        const [x, y] = SAMPLES[i];
        if (x >= pixels.size[0] || y >= pixels.size[1]) return true;
        return rgb.every((c, k) => Math.abs(c - painted(x, y)[k]) <= tolerance);
      });
      if (matches) break;
      if (Date.now() > deadline) throw new Error(`${pathName}: the pattern did not show: ${JSON.stringify(pixels)}`);
      await page.waitForTimeout(250);
    }
    stage('pattern', { path: pathName, size: pixels.size });

    // Both paths ask the desktop to take the view's size: wait until it has.
    const sized = Date.now() + 15000;
    let shown;
    for (;;) {
      shown = await page.evaluate(() => {
        const el = document.querySelector('.desktop-video') || document.querySelector('.desktop-vnc canvas');
        const host = document.querySelector('.desktop-host');
        return { size: [el.videoWidth || el.width, el.videoHeight || el.height], view: [host.clientWidth, host.clientHeight] };
      });
      if (shown.size[0] === shown.view[0] && shown.size[1] === shown.view[1]) break;
      if (Date.now() > sized) throw new Error(`${pathName}: the desktop did not take the view's size: ${JSON.stringify(shown)}`);
      await page.waitForTimeout(200);
    }
    stage('resized', { path: pathName, size: shown.size });
    await shot(`0${2 + 2 * round}-desktop-${pathName.toLowerCase()}`);

    // Point at a spot of the desktop through the page's view.
    const target = round === 1 ? [321, 123] : [555, 333];
    const box = await page.evaluate(() => {
      const el = document.querySelector('.desktop-video') || document.querySelector('.desktop-vnc canvas');
      const r = el.getBoundingClientRect();
      const w = el.videoWidth || el.width;
      const h = el.videoHeight || el.height;
      return { left: r.left, top: r.top, width: r.width, height: r.height, w, h };
    });
    const scale = Math.min(box.width / box.w, box.height / box.h);
    const left = box.left + (box.width - box.w * scale) / 2;
    const top = box.top + (box.height - box.h * scale) / 2;
    await page.mouse.move(left + 10, top + 10);
    await page.mouse.move(left + (target[0] + 0.5) * scale, top + (target[1] + 0.5) * scale, { steps: 5 });
    stage('pointer', { path: pathName, x: target[0], y: target[1], size: [box.w, box.h], view: shown.view });
    await nextLine(40000);

    // Click into it and type: Shift+H, i, Return, and é as a non-US layout
    // produces it (a key whose value is the character).
    await page.mouse.down();
    await page.mouse.up();
    await page.keyboard.press('Shift+KeyH');
    await page.keyboard.press('KeyI');
    await page.keyboard.press('Enter');
    // Playwright knows no key "é": dispatch what a French layout's 2 key
    // gives, where the keys go.
    await page.evaluate(() => {
      const target = document.activeElement || document.body;
      for (const type of ['keydown', 'keyup']) {
        target.dispatchEvent(new KeyboardEvent(type, { key: 'é', code: 'Digit2', bubbles: true, cancelable: true }));
      }
    });
    stage('typed', { path: pathName, keysyms: ['0xffe1', '0x48', '0x69', '0xff0d', '0xe9'] });
    await nextLine(40000);

    // The clipboard, both ways: the caller puts text on the desktop's X
    // clipboard; the page shows it; text sent from the page lands there.
    await page.getByRole('button', { name: 'Clipboard' }).click();
    const clipboardBox = page.getByLabel('Desktop clipboard');
    await clipboardBox.waitFor({ timeout: 5000 });
    stage('clipboard-open', { path: pathName, expect: `from the desktop over ${pathName}` });
    await nextLine(40000);
    const fromDesktop = `from the desktop over ${pathName}`;
    const clipDeadline = Date.now() + 15000;
    while ((await clipboardBox.inputValue()) !== fromDesktop) {
      if (Date.now() > clipDeadline) {
        throw new Error(`${pathName}: the desktop's clipboard did not reach the page: ${JSON.stringify(await clipboardBox.inputValue())}`);
      }
      await page.waitForTimeout(200);
    }
    const toDesktop = `to the desktop over ${pathName}: café`;
    await clipboardBox.fill(toDesktop);
    await page.getByRole('button', { name: 'Send to desktop' }).click();
    stage('clipboard-sent', { path: pathName, text: toDesktop });
    await nextLine(40000);
    await shot(`0${2 + 2 * round}b-clipboard-${pathName.toLowerCase()}`);

    // A smaller window: the desktop follows the view's new size.
    const before = shown.view;
    await page.setViewportSize({ width: 1100, height: 860 });
    const followDeadline = Date.now() + 15000;
    let followed;
    for (;;) {
      followed = await page.evaluate(() => {
        const el = document.querySelector('.desktop-video') || document.querySelector('.desktop-vnc canvas');
        const host = document.querySelector('.desktop-host');
        return { size: [el.videoWidth || el.width, el.videoHeight || el.height], view: [host.clientWidth, host.clientHeight] };
      });
      // Within a pixel: the view's CSS height can be fractional, and noVNC
      // rounds its own measure down where the page's clientHeight rounds.
      const same = Math.abs(followed.size[0] - followed.view[0]) <= 1 && Math.abs(followed.size[1] - followed.view[1]) <= 1;
      if (same && followed.view[0] !== before[0]) break;
      if (Date.now() > followDeadline) {
        throw new Error(`${pathName}: the desktop did not follow the window: ${JSON.stringify({ before, followed })}`);
      }
      await page.waitForTimeout(200);
    }
    stage('window-resized', { path: pathName, from: before, size: followed.size });
    await nextLine(30000);
    await page.setViewportSize({ width: 1360, height: 1000 });

    await page.getByRole('button', { name: 'Stop desktop' }).click();
    await page.getByText('You stopped the desktop.').waitFor({ timeout: 30000 });
    stage('ended', { path: pathName });
    await shot(`0${3 + 2 * round}-ended-${pathName.toLowerCase()}`);
    await page.getByRole('button', { name: 'Start another desktop' }).click();
  }
});
