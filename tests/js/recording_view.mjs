// Opens a live view link in a real headless Chromium (Playwright) and reports what the
// page shows: for an ended recorded session, its recording in a <video> element.
// usage: node recording_view.mjs <live_url>
import { chromium } from 'playwright-core';

const [liveUrl] = process.argv.slice(2);
const flags = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const viewer = await chromium.launch({ executablePath: '/usr/bin/chromium', args: flags });
const page = await viewer.newPage();
const result = {};
const response = await page.goto(liveUrl);
result.status = response.status();
result.hasVideo = (await page.$('video')) !== null;
if (result.hasVideo) {
  await page.waitForFunction(() => document.querySelector('video').readyState >= 1, null, { timeout: 20000 });
  Object.assign(result, await page.evaluate(() => {
    const v = document.querySelector('video');
    return { duration: v.duration, width: v.videoWidth, height: v.videoHeight };
  }));
  // Seeking works (the broker answers ranges) and plays from there.
  await page.evaluate(() => { const v = document.querySelector('video'); v.currentTime = v.duration / 2; });
  await page.waitForFunction(() => { const v = document.querySelector('video'); return !v.seeking && v.readyState >= 2; }, null, { timeout: 20000 });
  result.seekedTo = await page.evaluate(() => document.querySelector('video').currentTime);
  result.error = await page.evaluate(() => document.querySelector('video').error && document.querySelector('video').error.message);
} else {
  result.text = await page.evaluate(() => document.body.innerText);
}
await viewer.close();
console.log(JSON.stringify(result));
