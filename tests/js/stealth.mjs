// Loads tests/data/stealth/probe.html (botd and the automation tells, on the page, a
// cross-site iframe, a dedicated and a service worker) in the session's first tab, opens
// a tab from it with window.open (after a real click), and loads it again in a tab the
// client opens itself (Target.createTarget). Prints every report as JSON.
// usage: node stealth.mjs puppeteer|playwright <endpoint> <site_url>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, site] = process.argv.slice(2);
const probe = `${site}/probe.html`;
const result = {};

// Polling, not requestAnimationFrame: the first tab is hidden once it has opened another.
async function run(page, wait, click) {
  await page.goto(probe);
  const report = await wait(page, '__report');
  await click(page);
  report.tab = await wait(page, '__tabReport');
  return report;
}

async function created(page, wait) {
  await page.goto(`${probe}?role=created`);
  return wait(page, '__surfaces');
}

if (client === 'puppeteer') {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  const wait = async (page, name) =>
    (await page.waitForFunction((n) => window[n], { timeout: 60000, polling: 100 }, name)).jsonValue();
  const click = (page) => page.click('#open');
  result.first = await run((await browser.pages())[0], wait, click);
  result.created = await created(await browser.newPage(), wait);
  await browser.disconnect();
} else {
  const browser = await chromium.connectOverCDP(endpoint, { timeout: 15000 });
  const context = browser.contexts()[0];
  const wait = async (page, name) =>
    (await page.waitForFunction((n) => window[n], name, { timeout: 60000, polling: 100 })).jsonValue();
  const click = (page) => page.click('#open');
  result.first = await run(context.pages()[0], wait, click);
  result.created = await created(await context.newPage(), wait);
  await browser.close(); // for connectOverCDP this only disconnects
}
console.log(JSON.stringify(result));
