// Puts a file the broker holds on a page's file input and submits the form, with
// Puppeteer (uploadFile) or Playwright (setInputFiles), as a user of a remote browser
// would after uploading the file through the API. Prints JSON when the form is sent.
// usage: node upload_form.mjs <puppeteer|playwright> <cdp_url> <site> <path>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, site, path] = process.argv.slice(2);
const result = {};
if (client === 'puppeteer') {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  const page = await browser.newPage();
  await page.goto(site + '/form', { waitUntil: 'load' });
  const input = await page.$('input[type=file]');
  await input.uploadFile(path);
  await Promise.all([page.waitForNavigation(), page.click('#send')]);
  result.text = await page.evaluate(() => document.body.innerText);
  await page.close();
  await browser.disconnect();
} else {
  const browser = await chromium.connectOverCDP(endpoint);
  const page = await browser.contexts()[0].newPage();
  await page.goto(site + '/form');
  await page.setInputFiles('input[type=file]', path);
  await Promise.all([page.waitForNavigation(), page.click('#send')]);
  result.text = await page.evaluate(() => document.body.innerText);
  await page.close();
  await browser.close();
}
console.log(JSON.stringify(result));
