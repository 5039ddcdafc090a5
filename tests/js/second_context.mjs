// Asks a session's browser for a second browser context the way each client does
// (Puppeteer's createBrowserContext, Playwright's newContext), then opens a page in the
// default context and loads a URL in it. Prints as JSON whether the context was made (or
// the error), the page's title, and the contexts the client sees.
// usage: node second_context.mjs <cdp_url> <puppeteer|playwright> <url>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [endpoint, client, url] = process.argv.slice(2);
const result = {};
if (client === 'puppeteer') {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  try {
    await browser.createBrowserContext();
    result.created = true;
  } catch (e) {
    result.created = false;
    result.error = String(e.message || e);
  }
  const page = await browser.newPage();
  await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  result.title = await page.title();
  result.contexts = browser.browserContexts().length;
  await page.close();
  await browser.disconnect();
} else {
  const browser = await chromium.connectOverCDP(endpoint, { timeout: 15000 });
  try {
    await browser.newContext();
    result.created = true;
  } catch (e) {
    result.created = false;
    result.error = String(e.message || e);
  }
  const page = await browser.contexts()[0].newPage();
  await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  result.title = await page.title();
  result.contexts = browser.contexts().length;
  await page.close();
  await browser.close(); // for connectOverCDP this only disconnects
}
console.log(JSON.stringify(result));
