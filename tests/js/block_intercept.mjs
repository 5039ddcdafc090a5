// A client's own request interception on a session that blocks images: Puppeteer's
// setRequestInterception or Playwright's route. The handler answers /data.json itself and
// lets everything else through; prints how many requests it saw and what the page got.
// usage: node block_intercept.mjs puppeteer|playwright <cdp_url> <url>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, url] = process.argv.slice(2);
let intercepted = 0;
let settled;
if (client === 'puppeteer') {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  const page = await browser.newPage();
  await page.setRequestInterception(true);
  page.on('request', (request) => {
    intercepted += 1;
    if (request.url().includes('/data.json')) {
      request.respond({ status: 200, contentType: 'text/plain', body: 'from the client' });
    } else {
      request.continue();
    }
  });
  await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  settled = await page.evaluate(() => window.settled);
  await page.close();
  await browser.disconnect();
} else {
  const browser = await chromium.connectOverCDP(endpoint);
  const page = await browser.contexts()[0].newPage();
  await page.route('**/*', (route) => {
    intercepted += 1;
    if (route.request().url().includes('/data.json')) {
      return route.fulfill({ status: 200, contentType: 'text/plain', body: 'from the client' });
    }
    return route.continue();
  });
  await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  settled = await page.evaluate(() => window.settled);
  await page.close();
  await browser.close();
}
console.log(JSON.stringify({ intercepted, data: settled.xhr, images: settled.images }));
