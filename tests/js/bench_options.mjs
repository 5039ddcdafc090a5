// Session options' cost, side by side in one run (run by scripts/bench-options.sh):
// create -> first CDP reply for a session without options, with an identity (user agent,
// locale, time zone), a fingerprint preset, a device and with a proxy + idle timeout, and
// context sessions without options, with a fingerprint and with a device; then a page
// load through a session's forward proxy against the same Chromium started directly, alternated round by round.
// With a baseline broker (another build), creates without options and recorded ones are
// also timed against it, alternated with this one's.
// usage: node --experimental-websocket bench_options.mjs <gate> <key> <site_url> <proxy> <rounds> [baseline_gate]
import puppeteer from 'puppeteer-core';
import { createToFirstReply } from './bench_common.mjs';

const [gate, key, site, proxy, roundsArg, baselineGate] = process.argv.slice(2);
const rounds = Number(roundsArg);
const api = `http://${gate}`;
const baselineApi = baselineGate ? `http://${baselineGate}` : null;
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };

async function firstReply(body, at = api) {
  const took = await createToFirstReply(at, key, body);
  // Let the pool refill so that every create finds a warm browser.
  await new Promise((r) => setTimeout(r, 1500));
  return took;
}

const variants = {
  none: {},
  identity: { user_agent: 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36', locale: 'de-DE', timezone: 'Europe/Berlin' },
  fingerprint: { fingerprint: { os: 'windows' }, locale: 'de-DE', timezone: 'Europe/Berlin' },
  device: { device: 'Pixel 8' },
  proxy_idle: { proxy: { server: `http://${proxy}`, username: 'u', password: 'p' }, idle_timeout: 300 },
  recorded: { record: true },
  context_none: { isolation: 'context' },
  context_fingerprint: { isolation: 'context', fingerprint: { os: 'windows' }, locale: 'de-DE', timezone: 'Europe/Berlin' },
  context_device: { isolation: 'context', device: 'Pixel 8' },
};
// Timed against the baseline too, when there is one.
const compared = ['none', 'recorded'];
const creates = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
if (baselineApi) for (const name of compared) creates[`${name}_baseline`] = [];
for (let i = 0; i < rounds; i++) {
  for (const [name, body] of Object.entries(variants)) {
    creates[name].push(await firstReply(body));
    if (baselineApi && compared.includes(name)) creates[`${name}_baseline`].push(await firstReply(body, baselineApi));
  }
}

async function loads(browser) {
  const page = await browser.newPage();
  await page.goto(site);
  const times = [];
  for (let i = 0; i < 5; i++) {
    const started = performance.now();
    await page.goto(`${site}?r=${Math.random()}`, { waitUntil: 'load' });
    times.push(performance.now() - started);
  }
  await page.close();
  return times;
}
const created = await (await fetch(`${api}/public/sessions`, { method: 'POST', headers, body: '{}' })).json();
const viaGateway = await puppeteer.connect({ browserWSEndpoint: created.cdp_url });
const direct = await puppeteer.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--headless', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pageLoads = { gateway: [], direct: [] };
for (let i = 0; i < rounds; i++) {
  pageLoads.gateway.push(...await loads(viaGateway));
  pageLoads.direct.push(...await loads(direct));
}
await direct.close();
await viaGateway.disconnect();

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const p90 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length * 0.9)]; };
const out = {};
for (const [k, v] of Object.entries(creates)) out[`create_${k}`] = { median_ms: +median(v).toFixed(1), p90_ms: +p90(v).toFixed(1), n: v.length };
for (const [k, v] of Object.entries(pageLoads)) out[`page_load_${k}`] = { median_ms: +median(v).toFixed(1), p90_ms: +p90(v).toFixed(1), n: v.length };
console.log(JSON.stringify(out));
