// Downloads three files in a session as a Puppeteer script would: a link to a file the
// site serves as an attachment, a blob made by script, and a link to a file too large
// for the session's quota. With `elsewhere`, the client first sets its own download
// folder (as Playwright does) to show the broker's folder wins. Prints JSON when done.
// usage: node downloads.mjs <cdp_url> <site> [elsewhere_dir]
import puppeteer from 'puppeteer-core';
import WebSocket from 'ws';

const [endpoint, site, elsewhere] = process.argv.slice(2);
// The client's own setting, on a connection of its own held open throughout.
let own = null;
if (elsewhere) {
  own = new WebSocket(endpoint);
  await new Promise((resolve, reject) => { own.on('open', resolve); own.on('error', reject); });
  const answered = new Promise((resolve) => own.on('message', (m) => { if (JSON.parse(m).id === 1) resolve(JSON.parse(m)); }));
  own.send(JSON.stringify({ id: 1, method: 'Browser.setDownloadBehavior', params: { behavior: 'allow', downloadPath: elsewhere, eventsEnabled: true } }));
  const reply = await answered;
  if (reply.error) throw new Error(JSON.stringify(reply.error));
}
const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const [page] = await browser.pages();
await page.goto(site + '/', { waitUntil: 'load' });
await page.click('#report');
await page.evaluate(() => {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob(['made by script\n'.repeat(100)], { type: 'text/plain' }));
  a.download = 'blob.txt';
  document.body.append(a);
  a.click();
});
await page.click('#big');
// Give the downloads a moment to start before the connection goes.
await new Promise((r) => setTimeout(r, 1500));
await browser.disconnect();
if (own) own.close();
console.log(JSON.stringify({ ok: true }));
