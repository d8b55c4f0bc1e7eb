// What every driver of the gate's page shares: its arguments (PUBLIC_URL WALLET_RPC
// SHOTS_DIR and the driver's own), the stage protocol with the Rust test (JSON lines
// on stdout, the test's word as a line on stdin), diagnostics on stderr, a bound on
// the whole run, and Chromium launched with its default (privacy) settings.
const fs = require('fs');
const readline = require('readline');
const { chromium } = require('playwright-core');

/**
 * Parses the arguments named in `usage` (all required) and returns the driver's
 * tools; the run is failed after `limitMs`.
 */
function pageDriver(script, names, limitMs = 280000) {
  const args = process.argv.slice(2);
  if (args.length < names.length || args.some((a) => !a)) {
    console.error(`usage: ${script} ${names.join(' ')}`);
    process.exit(2);
  }
  const named = Object.fromEntries(names.map((n, i) => [n, args[i]]));
  fs.mkdirSync(named.SHOTS_DIR, { recursive: true });
  const started = Date.now();
  const log = (m) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${m}`);
  const stage = (name, extra = {}) => console.log(JSON.stringify({ stage: name, ...extra }));
  const lines = readline.createInterface({ input: process.stdin });
  const nextLine = (ms) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no word from the caller within ${ms / 1000} s`)), ms);
    lines.once('line', (line) => { clearTimeout(timer); resolve(line); });
  });
  let browser;
  const finish = async (code, error) => {
    if (error) {
      log(`failed: ${error && error.stack || error}`);
      stage('failed', { error: String(error && error.message || error) });
    } else {
      stage('done');
    }
    if (browser) await browser.close().catch(() => {});
    process.exit(code);
  };
  setTimeout(() => finish(1, `the driver ran out of its ${limitMs / 1000} s`), limitMs).unref();
  const launch = async () => {
    browser = await chromium.launch({
      executablePath: process.env.DESKGATE_CHROMIUM || '/usr/bin/chromium',
      timeout: 20000,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--autoplay-policy=no-user-gesture-required'],
    });
    return browser;
  };
  /** Runs `scenario` and reports its verdict. */
  const run = (scenario) => scenario().then(() => finish(0), (e) => finish(1, e));
  return { args: named, log, stage, nextLine, launch, run };
}

/**
 * Gives every page of `context` `window.desktopFrame()`: the desktop view's current
 * frame (the WebRTC video or the noVNC canvas) drawn on a canvas, as {ctx, w, h}, or
 * null before a frame shows.
 */
async function exposeDesktopFrame(context) {
  await context.addInitScript(() => {
    window.desktopFrame = () => {
      const video = document.querySelector('.desktop-video');
      const vnc = document.querySelector('.desktop-vnc canvas');
      const source = video || vnc;
      if (!source) return null;
      const w = video ? video.videoWidth : vnc.width;
      const h = video ? video.videoHeight : vnc.height;
      if (!w || !h) return null;
      const canvas = document.createElement('canvas');
      canvas.width = w;
      canvas.height = h;
      const ctx = canvas.getContext('2d');
      ctx.drawImage(source, 0, 0, w, h);
      return { ctx, w, h };
    };
  });
}

module.exports = { pageDriver, exposeDesktopFrame };
