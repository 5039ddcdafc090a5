// Loads tests/data/fingerprint/probe.html (every surface of the machine, fpscanner and
// botd) in the session's first tab, opens a tab from it (after a real click), and loads it
// again in a tab the client opens itself. Prints every report as JSON.
// usage: node fingerprint.mjs puppeteer|playwright <endpoint> <site_url>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, site] = process.argv.slice(2);
const probe = `${site}/probe.html`;
const result = {};

async function run(page, wait) {
  await page.goto(probe);
  const report = await wait(page, '__report');
  await page.click('#open');
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
    (await page.waitForFunction((n) => window[n], { timeout: 40000, polling: 100 }, name)).jsonValue();
  result.first = await run((await browser.pages())[0], wait);
  result.created = await created(await browser.newPage(), wait);
  await browser.disconnect();
} else {
  const browser = await chromium.connectOverCDP(endpoint, { timeout: 15000 });
  const context = browser.contexts()[0];
  const wait = async (page, name) =>
    (await page.waitForFunction((n) => window[n], name, { timeout: 40000, polling: 100 })).jsonValue();
  result.first = await run(context.pages()[0], wait);
  result.created = await created(await context.newPage(), wait);
  await browser.close();
}
console.log(JSON.stringify(result));
