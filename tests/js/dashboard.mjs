// Uses the dashboard in a real headless Chromium (Playwright) as a person would: types
// the API key, watches a live session's thumbnail change, plays an ended session's
// recording, and reports which sessions it showed.
// usage: node dashboard.mjs <api> <key> <live_session_id> <ended_session_id>
import { chromium } from 'playwright-core';

const [api, key, liveId, endedId] = process.argv.slice(2);
const flags = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: flags });
const page = await browser.newPage();
const result = { urls: [] };
page.on('request', (r) => result.urls.push(r.url()));
await page.goto(api + '/dashboard');
await page.fill('#key', key);
await page.click('button[type=submit]');
await page.waitForSelector(`[data-session="${liveId}"] img.thumbnail[data-shots]`, { timeout: 20000 });
const thumb = page.locator(`[data-session="${liveId}"] img.thumbnail`);
const firstPixel = await pixel(thumb);
// The page behind it changes colour every second (red, green, blue): a later thumbnail
// shows another of the three. Compared by what the image shows, not by its URL (every
// thumbnail is a new object URL, the same picture or not).
result.pixels = [firstPixel];
result.thumbnailChanged = false;
const deadline = Date.now() + 20000;
while (Date.now() < deadline) {
  const now = await pixel(thumb);
  if (now.join() !== result.pixels[result.pixels.length - 1].join()) result.pixels.push(now);
  if (primary(firstPixel) !== null && primary(now) !== null && primary(now) !== primary(firstPixel)) {
    result.thumbnailChanged = true;
    break;
  }
  await new Promise((r) => setTimeout(r, 250));
}
result.shown = await page.evaluate(() => [...document.querySelectorAll('[data-session]')].map((e) => e.dataset.session));
result.liveLink = await page.locator(`[data-session="${liveId}"] a`).getAttribute('href');
await page.click(`[data-session="${endedId}"] button.play`);
await page.waitForFunction((id) => { const v = document.querySelector(`[data-session="${id}"] video`); return v && v.readyState >= 1; }, endedId, { timeout: 20000 });
result.recordingDuration = await page.evaluate((id) => document.querySelector(`[data-session="${id}"] video`).duration, endedId);
result.endedText = await page.locator(`[data-session="${endedId}"]`).innerText();
result.keyInStorage = await page.evaluate(() => sessionStorage.getItem('cdpgate_api_key') !== null);
await browser.close();
result.keyInUrl = result.urls.some((u) => u.includes(key));
console.log(JSON.stringify(result));

// Which of red, green and blue a pixel plainly is (JPEG shifts them a little), or null.
function primary([r, g, b]) {
  const i = [r, g, b].findIndex((v, j, all) => v > 180 && all.every((w, k) => k === j || w < 80));
  return i < 0 ? null : i;
}

// The thumbnail's centre colour, drawn on a canvas.
async function pixel(locator) {
  return locator.evaluate(async (img) => {
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    return [...g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data.slice(0, 3)];
  });
}
