// Drives a cdpgate session the way a user's script would, and prints what it saw as JSON.
// usage: node drive.mjs puppeteer|playwright <endpoint> <site_url>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, siteUrl] = process.argv.slice(2);

// Width and height from a PNG's IHDR chunk.
function pngSize(buf) {
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

async function inspect(page) {
  await page.goto(siteUrl);
  const seen = await page.evaluate(() => ({
    title: document.title,
    text: document.querySelector('h1')?.textContent,
    sum: 20 + 22,
    innerWidth, innerHeight,
    screenWidth: screen.width, screenHeight: screen.height,
  }));
  const shot = await page.screenshot({ type: 'png' });
  return { ...seen, screenshot: pngSize(Buffer.from(shot)) };
}

let result;
if (client === 'puppeteer') {
  // defaultViewport: null leaves the page at the session's own size.
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  // The tab the browser started with is the session's size too.
  const [first] = await browser.pages();
  const initial = await first.evaluate(() => [innerWidth, innerHeight]);
  const page = await browser.newPage();
  result = { ...(await inspect(page)), initial, version: await browser.version() };
  await page.close();
  await browser.disconnect();
} else {
  const browser = await chromium.connectOverCDP(endpoint, { timeout: 15000 });
  const context = browser.contexts()[0];
  const page = await context.newPage();
  result = { ...(await inspect(page)), version: browser.version() };
  await page.close();
  await browser.close(); // for connectOverCDP this only disconnects
}
console.log(JSON.stringify(result));
