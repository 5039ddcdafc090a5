// Connects to a session as a Puppeteer script would, finds the tab whose URL contains a
// given part, and prints its URL and first heading as JSON.
// usage: node read_page.mjs <cdp_url> <url_part>
import puppeteer from 'puppeteer-core';

const [endpoint, part] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const pages = await browser.pages();
const page = pages.find((p) => p.url().includes(part));
const result = page
  ? { url: page.url(), heading: await page.$eval('h1', (h) => h.textContent), tabs: pages.length }
  : { url: null, urls: pages.map((p) => p.url()) };
await browser.disconnect();
console.log(JSON.stringify(result));
