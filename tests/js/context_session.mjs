// Uses a context session as a Puppeteer or Playwright user would: what the browser shows,
// cookies and localStorage written or read at the site, and (with "close") the browser
// closed as a script ends. Prints what it saw as JSON.
// usage: node context_session.mjs puppeteer|playwright <endpoint> <site_url> <marker|-> [close]
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, site, marker, close] = process.argv.slice(2);
const result = {};

async function visit(page) {
  await page.goto(site);
  if (marker !== '-') {
    await page.evaluate((m) => localStorage.setItem('who', m), marker);
  }
  result.localStorage = await page.evaluate(() => localStorage.getItem('who'));
  result.title = await page.title();
  result.screenshotBytes = (await page.screenshot({ type: 'png' })).length;
}

if (client === 'puppeteer') {
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  result.pagesAtStart = (await browser.pages()).length;
  result.contexts = browser.browserContexts().length;
  const page = await browser.newPage();
  if (marker !== '-') {
    await page.setCookie({ name: 'who', value: marker, url: site });
  }
  await visit(page);
  result.cookies = (await page.cookies()).map((c) => `${c.name}=${c.value}`);
  result.pages = (await browser.pages()).length;
  result.targets = browser.targets().map((t) => t.type()).sort();
  if (close === 'close') {
    await browser.close();
  } else {
    await browser.disconnect();
  }
} else {
  const browser = await chromium.connectOverCDP(endpoint, { timeout: 15000 });
  result.contexts = browser.contexts().length;
  const context = browser.contexts()[0];
  result.pagesAtStart = context.pages().length;
  if (marker !== '-') {
    await context.addCookies([{ name: 'who', value: marker, url: site }]);
  }
  const page = await context.newPage();
  await visit(page);
  const state = await context.storageState();
  result.cookies = state.cookies.map((c) => `${c.name}=${c.value}`);
  result.storageOrigins = state.origins.map((o) => o.localStorage.map((e) => `${e.name}=${e.value}`).join(','));
  result.pages = context.pages().length;
  await browser.close(); // for connectOverCDP this only disconnects
}
console.log(JSON.stringify(result));
