// Creates a session over https and drives it over wss (NODE_EXTRA_CA_CERTS trusts the
// test's certificate). usage: node tls_check.mjs <api base> <key>
import puppeteer from 'puppeteer-core';

const [api, key] = process.argv.slice(2);
const response = await fetch(`${api}/public/sessions`, { method: 'POST', headers: { 'X-API-Key': key }, body: '{}' });
const session = await response.json();
const browser = await puppeteer.connect({ browserWSEndpoint: session.cdp_url, defaultViewport: null });
const page = await browser.newPage();
const sum = await page.evaluate(() => 40 + 2);
await browser.disconnect();
const live = await fetch(session.metadata.live_url);
console.log(JSON.stringify({ status: response.status, cdp_url: session.cdp_url, sum, live_status: live.status }));
