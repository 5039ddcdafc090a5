// Connects to a session as a Puppeteer script would, opens a URL in a tab (the session's
// first tab with `first`, else a new one), and prints as JSON whether it loaded (or the
// network error), the page's title and the value of an expression evaluated in it.
// usage: node visit.mjs <cdp_url> <url> [expression] [first|new]
import puppeteer from 'puppeteer-core';

const [endpoint, url, expression, which] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const page = which === 'first' ? (await browser.pages())[0] : await browser.newPage();
const result = {};
try {
  const response = await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  result.ok = true;
  result.status = response ? response.status() : null;
  result.title = await page.title();
} catch (e) {
  result.ok = false;
  result.error = String(e.message || e);
}
if (expression) {
  try {
    result.value = await page.evaluate(expression);
  } catch (e) {
    result.value_error = String(e.message || e);
  }
}
if (which !== 'first') await page.close();
await browser.disconnect();
console.log(JSON.stringify(result));
