// Opens live view links in a real headless Chromium (Playwright) and reports the
// challenges each page was told of and the banner it shows, once its CDP socket has
// answered (the broker tells the challenges seen before the page connected first).
// usage: node live_challenge.mjs <live_url> [<live_url> …]
import { chromium } from 'playwright-core';

const flags = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const viewer = await chromium.launch({ executablePath: '/usr/bin/chromium', args: flags });
const result = [];
try {
  for (const url of process.argv.slice(2)) {
    const page = await viewer.newPage();
    await page.goto(url);
    await page.waitForFunction(() => window.__live.target !== null, null, { timeout: 20000 });
    result.push(await page.evaluate(() => {
      const banner = document.getElementById('challenge');
      return {
        challenges: window.__live.challenges,
        banner: banner.classList.contains('shown') ? banner.textContent : null,
      };
    }));
    await page.close();
  }
} finally {
  await viewer.close();
}
console.log(JSON.stringify(result));
