// Smoke test for the media tests' browser tooling: playwright-core drives Debian's
// chromium (no downloaded browser) and screenshots a data: URL.
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules node scripts/browser/smoke.js OUT.png
const { chromium } = require('playwright-core');
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.DESKGATE_CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 320, height: 200 } });
  await page.goto('data:text/html,<title>deskgate</title><body style="margin:0;background:%23ff8000">ok</body>');
  await page.screenshot({ path: process.argv[2] || 'smoke.png' });
  console.log(`chromium ${browser.version()}: "${await page.title()}" -> ${process.argv[2] || 'smoke.png'}`);
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
