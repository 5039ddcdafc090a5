// Downloads three files in a session as a Puppeteer script would: a link to a file the
// site serves as an attachment, a blob made by script, and a link to a file too large
// for the session's quota. Prints JSON when done.
// usage: node downloads.mjs <cdp_url> <site> [blob_name=blob.txt]
import puppeteer from 'puppeteer-core';

const [endpoint, site, blobName = 'blob.txt'] = process.argv.slice(2);
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const [page] = await browser.pages();
await page.goto(site + '/', { waitUntil: 'load' });
await page.click('#report');
await page.evaluate((blobName) => {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob(['made by script\n'.repeat(100)], { type: 'text/plain' }));
  a.download = blobName;
  document.body.append(a);
  a.click();
}, blobName);
await page.click('#big');
// Give the downloads a moment to start before the connection goes.
await new Promise((r) => setTimeout(r, 1500));
await browser.disconnect();
console.log(JSON.stringify({ ok: true }));
