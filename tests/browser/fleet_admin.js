// Drives the operator page (/admin) of a gate that discovers its GPU hosts, in
// Debian's headless Chromium, through the page only:
//   1. the admin token opens the page; the "GPU hosts" table lists gpu-a and gpu-b
//      by name, both up (screenshot fleet-1-hosts.png);
//   2. "Drain host gpu-b": the row says drained and the button turns to Undrain;
//      the driver reports {"stage":"drained"} and waits for a line on stdin (the
//      caller checks that no new lease goes there);
//   3. "Undrain host gpu-b": the row is back in service ({"stage":"undrained"}).
//
//   NODE_PATH=$DESKGATE_PLAYWRIGHT_DIR/node_modules DESKGATE_CHROMIUM=CHROMIUM \
//       node fleet_admin.js PUBLIC_URL WALLET_RPC SHOTS_DIR ADMIN_TOKEN
//
// WALLET_RPC is not used (no wallet signs in here); it keeps the drivers' argument
// order. Every wait is bounded.
const path = require('path');
const { pageDriver } = require('./page_driver');

const { args, log, stage, nextLine, launch, run } = pageDriver('fleet_admin.js', ['PUBLIC_URL', 'WALLET_RPC', 'SHOTS_DIR', 'ADMIN_TOKEN'], 120000);
const { PUBLIC_URL: publicUrl, SHOTS_DIR: shots, ADMIN_TOKEN: adminToken } = args;

run(async () => {
  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e}`));
  await page.goto(`${publicUrl}/admin`);
  await page.getByLabel('Admin token').fill(adminToken);
  await page.getByRole('button', { name: 'Open' }).click();
  const hosts = page.getByRole('region', { name: 'GPU hosts' });
  for (const name of ['gpu-a', 'gpu-b']) {
    await hosts.getByRole('row').filter({ hasText: name }).getByRole('cell', { name: 'up', exact: true }).waitFor({ timeout: 15000 });
  }
  await page.screenshot({ path: path.join(shots, 'fleet-1-hosts.png'), fullPage: true });
  stage('listed');

  await page.getByRole('button', { name: 'Drain host gpu-b' }).click();
  await page.getByRole('button', { name: 'Undrain host gpu-b' }).waitFor({ timeout: 10000 });
  await hosts.getByRole('row').filter({ hasText: 'gpu-b' }).getByRole('cell', { name: 'up, drained' }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: path.join(shots, 'fleet-2-drained.png'), fullPage: true });
  stage('drained');
  await nextLine(60000);

  await page.getByRole('button', { name: 'Undrain host gpu-b' }).click();
  await page.getByRole('button', { name: 'Drain host gpu-b' }).waitFor({ timeout: 10000 });
  stage('undrained');
});
