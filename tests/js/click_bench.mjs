// What a script does without single actions: connect over cdp_url, click, read, disconnect.
// Prints the milliseconds of each round as JSON (for scripts/bench-actions.sh).
// usage: node click_bench.mjs <cdp_url> <rounds>
import puppeteer from 'puppeteer-core';

const [endpoint, rounds] = process.argv.slice(2);
const times = [];
for (let i = 0; i < Number(rounds); i++) {
  const start = performance.now();
  const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  const [page] = await browser.pages();
  await page.locator('#next').click();
  await page.$eval('#status', (e) => e.textContent);
  await browser.disconnect();
  times.push(performance.now() - start);
}
console.log(JSON.stringify(times));
