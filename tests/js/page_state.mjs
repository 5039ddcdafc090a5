// Opens URL in a session (through cdp_url), waits until the page says it is done, and
// prints what the page reported (window.__state) as JSON.
// usage: node page_state.mjs <cdp_url> <url>
import puppeteer from 'puppeteer-core';

const [endpoint, url] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const page = await browser.newPage();
await page.goto(url);
await page.waitForFunction(() => window.__state !== undefined, { timeout: 15000 });
const state = await page.evaluate(() => window.__state);
await page.close();
await browser.disconnect();
console.log(JSON.stringify(state));
