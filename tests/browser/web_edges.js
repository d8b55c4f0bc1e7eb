// Drives the gate's page through what goes wrong or runs out, in Debian's headless
// Chromium, through the page only, on a gate with one GPU:
//   0. a browser without a wallet is told what to do;
//   1. contention: A runs a desktop; B starts and is shown position 1 and an ETA; A
//      stops; B gets the desktop;
//   2. a dropped network: the caller cuts the browser's link and restores it; B's page
//      says it is reconnecting, then shows the desktop again;
//   3. idle culling: B gives no input; the warning comes, "Keep my desktop" keeps it;
//      the warning comes again, and without input the desktop ends, the page says why;
//   4. credit: C has 20 s of credit: the low-credit warning comes and "Top up 1 hour"
//      pays through the wallet and keeps the desktop; D has 15 s and no top-up: the
//      desktop ends at zero and the page says the credit ran out;
//   5. the operator page (/admin): a wrong token is refused, the right one opens it;
//      a GPU is drained and undrained, D is given credit, D's new desktop is stopped
//      from there (D's page says an operator ended it), and the audit log shows it.
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules DESKGATE_CHROMIUM=WRAPPER \
//       node web_edges.js PUBLIC_URL WALLET_RPC SHOTS_DIR ADMIN_TOKEN
//
// Wallets A-D are anvil's dev accounts #0-#3 (test_wallet.js); the caller has given
// A and B an hour of credit, C 20 s and D 15 s. Progress goes to stdout as JSON lines
// ({"stage": ...}); at {"stage":"cut"} the driver waits for a line on stdin (the
// caller cut the link), then at {"stage":"reconnecting"} for another (the caller
// restored it). Every wait is bounded.
const path = require('path');
const { pageDriver } = require('./page_driver');
const { injectWallet, DEV_ACCOUNTS } = require('./test_wallet');

const { args, log, stage, nextLine, launch, run } = pageDriver('web_edges.js', ['PUBLIC_URL', 'WALLET_RPC', 'SHOTS_DIR', 'ADMIN_TOKEN']);
const { PUBLIC_URL: publicUrl, WALLET_RPC: walletRpc, SHOTS_DIR: shots, ADMIN_TOKEN: adminToken } = args;

let browser;

/** A signed-in page of its own browser context for dev account `n`. */
async function user(n, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await injectWallet(context, walletRpc, DEV_ACCOUNTS[n], log);
  const page = await context.newPage();
  page.on('console', (m) => log(`${name} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`${name} page error: ${e}`));
  await page.goto(publicUrl);
  await page.getByRole('button', { name: 'Connect wallet' }).click();
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Signed in as').waitFor({ timeout: 20000 });
  page.shot = (file) => page.screenshot({ path: path.join(shots, `${file}.png`) });
  return page;
}

const desktopShown = (page, ms) => page.getByTestId('desktop-path').waitFor({ timeout: ms });
/** Input: a click in the middle of the desktop (restarts the idle clock). */
const poke = async (page) => {
  const box = await page.locator('.desktop-host').boundingBox();
  await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
};
const endedSaying = async (page, words, ms) => {
  await page.getByRole('heading', { name: 'Your desktop has ended' }).waitFor({ timeout: ms });
  await page.getByText(words).waitFor({ timeout: 2000 });
};

run(async () => {
  browser = await launch();

  // 0. No wallet in the browser: the page says what to do.
  const bare = await browser.newContext();
  const noWallet = await bare.newPage();
  await noWallet.goto(publicUrl);
  await noWallet.getByText('No wallet found in this browser.').waitFor({ timeout: 15000 });
  stage('no-wallet-help');
  await bare.close();

  // 1. Contention.
  const a = await user(0, 'A');
  const b = await user(1, 'B');
  await a.getByRole('button', { name: 'Start small' }).click();
  await desktopShown(a, 60000);
  stage('a-running');
  await b.getByText('busy: you would queue').first().waitFor({ timeout: 10000 });
  await b.getByRole('button', { name: 'Start small' }).click();
  const queue = b.getByTestId('queue');
  await queue.filter({ hasText: 'number 1 in the queue' }).waitFor({ timeout: 10000 });
  const queued = await queue.textContent();
  if (!/at most \d/.test(queued)) throw new Error(`no ETA in: ${queued}`);
  stage('b-queued', { text: queued });
  await b.shot('edges-1-queued');
  await a.getByRole('button', { name: 'Stop desktop' }).click();
  await endedSaying(a, 'You stopped the desktop.', 30000);
  await desktopShown(b, 60000);
  await poke(b);
  stage('b-running');
  await b.shot('edges-2-granted');

  // 2. A dropped network.
  stage('cut');
  await nextLine(30000);
  await b.getByText(/dropped|Could not reach/).waitFor({ timeout: 30000 });
  await b.getByText(/Reconnecting in \d+ s/).waitFor({ timeout: 15000 });
  stage('reconnecting');
  await b.shot('edges-3-reconnecting');
  await nextLine(30000);
  await b.getByTestId('desktop-path').waitFor({ timeout: 60000 });
  await b.getByText(/Reconnecting in/).waitFor({ state: 'detached', timeout: 30000 });
  await poke(b);
  stage('reconnected');
  await b.shot('edges-4-reconnected');

  // 3. Idle culling: no input from here.
  const keep = b.getByRole('button', { name: 'Keep my desktop' });
  await keep.waitFor({ timeout: 60000 });
  stage('idle-warned');
  await b.shot('edges-5-idle-warning');
  await keep.click();
  await keep.waitFor({ state: 'detached', timeout: 5000 });
  stage('kept');
  await keep.waitFor({ timeout: 60000 });
  stage('idle-warned-again');
  await endedSaying(b, 'There was no input for too long', 60000);
  stage('idle-ended');
  await b.shot('edges-6-idle-ended');
  await b.context().close();
  await a.context().close();

  // 4. Credit: C tops up in one click, D runs out.
  const c = await user(2, 'C');
  await c.getByRole('button', { name: 'Start small' }).click();
  await desktopShown(c, 60000);
  const topUp = c.getByRole('button', { name: 'Top up 1 hour' });
  await topUp.waitFor({ timeout: 15000 });
  stage('low-credit');
  await c.shot('edges-7-low-credit');
  await topUp.click();
  await c.getByTestId('top-up').filter({ hasText: 'Credited' }).waitFor({ timeout: 20000 });
  await topUp.waitFor({ state: 'detached', timeout: 5000 });
  // Past the 20 s the desktop had before the top-up, it still runs.
  await c.waitForTimeout(22000);
  if (!(await c.getByTestId('desktop-path').isVisible())) throw new Error('the topped-up desktop ended');
  stage('topped-up', { left: await c.getByTestId('time-left').textContent() });
  await c.shot('edges-8-topped-up');
  await c.getByRole('button', { name: 'Stop desktop' }).click();
  await endedSaying(c, 'You stopped the desktop.', 30000);
  await c.context().close();

  const d = await user(3, 'D');
  await d.getByRole('button', { name: 'Start small' }).click();
  await desktopShown(d, 60000);
  await d.getByRole('button', { name: 'Top up 1 hour' }).waitFor({ timeout: 15000 });
  await endedSaying(d, 'Your credit ran out.', 40000);
  stage('credit-ended', { billed: await d.getByText(/^Billed:/).textContent() });
  await d.shot('edges-9-credit-ended');

  // 5. The operator page: the token typed in, GPUs drained and back, credit
  // given to D, D's new desktop stopped, all in the audit log.
  const adminContext = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const admin = await adminContext.newPage();
  admin.on('console', (m) => log(`admin console.${m.type()}: ${m.text()}`));
  await admin.goto(`${publicUrl}/admin`);
  await admin.getByLabel('Admin token').fill('not the token');
  await admin.getByRole('button', { name: 'Open' }).click();
  await admin.getByText("not this gate's admin token").waitFor({ timeout: 10000 });
  await admin.getByLabel('Admin token').fill(adminToken);
  await admin.getByRole('button', { name: 'Open' }).click();
  const drain = admin.getByRole('button', { name: 'Drain host 0 GPU 0' });
  await drain.click();
  await admin.getByRole('button', { name: 'Undrain host 0 GPU 0' }).waitFor({ timeout: 10000 });
  await admin.getByRole('button', { name: 'Undrain host 0 GPU 0' }).click();
  await drain.waitFor({ timeout: 10000 });
  stage('admin-drained');
  await admin.getByLabel('Wallet address').fill(DEV_ACCOUNTS[3]);
  await admin.getByLabel('Credit-seconds (negative to take)').fill('600');
  await admin.getByLabel('Reason').fill('a goodwill gesture');
  await admin.getByRole('button', { name: 'Adjust credit' }).click();
  await admin.getByText('Posted:').waitFor({ timeout: 10000 });
  stage('admin-credited');
  await d.getByRole('button', { name: 'Start another desktop' }).click();
  await d.getByRole('button', { name: 'Start small' }).click();
  await desktopShown(d, 60000);
  const stopIt = admin.getByRole('button', { name: /^Stop session / });
  await stopIt.waitFor({ timeout: 15000 });
  await admin.screenshot({ path: path.join(shots, 'edges-10-admin.png') });
  await stopIt.click();
  await endedSaying(d, 'An operator ended the desktop.', 30000);
  await admin.getByRole('cell', { name: 'session.kill' }).waitFor({ timeout: 15000 });
  await admin.getByRole('cell', { name: 'credit.adjust' }).first().waitFor({ timeout: 5000 });
  stage('admin-stopped');
});
