// Connects to a session as a Puppeteer script would, paints its first tab red and a new
// tab green, then brings the first tab to the front and the second again, holding each
// for `hold` ms: a recording that follows the front tab shows red, green, red, green.
// Prints JSON with each tab's visibility after each switch.
// usage: node bring_to_front.mjs <cdp_url> <hold ms>
import puppeteer from 'puppeteer-core';

const [endpoint, holdArg] = process.argv.slice(2);
const hold = Number(holdArg);
const solid = (colour) => `data:text/html,<style>html,body{margin:0;height:100%;background:${colour}}</style>`;
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const result = { shown: [] };
try {
  const [red] = await browser.pages();
  await red.goto(solid('%23ff0000'));
  await pause(hold);
  const green = await browser.newPage();
  await green.goto(solid('%2300ff00'));
  const shown = async () =>
    result.shown.push([await red.evaluate('document.visibilityState'), await green.evaluate('document.visibilityState')]);
  await pause(hold);
  for (const page of [red, green]) {
    await page.bringToFront();
    await shown();
    await pause(hold);
  }
  result.ok = true;
} catch (e) {
  result.ok = false;
  result.error = String(e.message || e);
}
await browser.disconnect();
console.log(JSON.stringify(result));
