// A scripted visit for tests/capture.rs: two tabs (the first with an iframe, a missing
// image, a failed request, a console error, an uncaught exception and a fetch that sends an
// Authorization header), the first tab under Puppeteer's request interception, which answers
// one URL itself and lets every other request go on.
// Usage: node capture_visit.mjs <cdp_url> <site base URL>
import puppeteer from 'puppeteer-core';

const [cdpUrl, site] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: cdpUrl, defaultViewport: null });
const out = { intercepted: 0, answered: null, leaks: null, tabs: [] };
try {
  const first = await browser.newPage();
  await first.setRequestInterception(true);
  first.on('request', (request) => {
    out.intercepted += 1;
    if (request.url().endsWith('/intercepted')) {
      request.respond({ status: 200, contentType: 'text/plain', body: 'answered by the client' });
    } else {
      request.continue();
    }
  });
  await first.goto(`${site}/a.html`, { waitUntil: 'load' });
  const seen = await first.evaluate(() => window.done);
  out.answered = seen.answered;
  out.leaks = seen.leaks;
  const second = await browser.newPage();
  await second.goto(`${site}/b.html`, { waitUntil: 'load' });
  await second.evaluate(() => window.done);
  out.tabs = [first.target()._targetId, second.target()._targetId];
} finally {
  await browser.disconnect();
}
console.log(JSON.stringify(out));
