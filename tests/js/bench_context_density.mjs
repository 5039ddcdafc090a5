// Context sessions' cost beside K live idle ones (scripts/bench-context-density.sh): the
// time of a context create to its first CDP reply, and of a new tab in a context session
// (Puppeteer newPage + evaluate), with none live, with K live, then with none again.
// Prints one JSON line: { "<phase>": { create: {p50, p90}, tab: {p50, p90} }, ... }.
// usage: node --experimental-websocket bench_context_density.mjs API KEY K N
import puppeteer from 'puppeteer-core';
import { createToFirstReply } from './bench_common.mjs';

const [api, key, k, n] = process.argv.slice(2);
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1);
};
const summary = (xs) => ({ p50: pct(xs, 0.5), p90: pct(xs, 0.9), n: xs.length });
const create = async () => {
  const res = await fetch(`${api}/public/sessions`, { method: 'POST', headers, body: JSON.stringify({ isolation: 'context', ttl: 3600 }) });
  const created = await res.json();
  if (!created.cdp_url) throw new Error(JSON.stringify(created));
  return created;
};
const end = (s) => fetch(`${api}/public/sessions/${s.session_id}/terminate`, { method: 'POST', headers });

async function creates() {
  const t = [];
  for (let i = 0; i < Number(n); i++) {
    await sleep(1000); // at rest: the spares are made again between creates
    t.push(await createToFirstReply(api, key, { isolation: 'context' }));
  }
  return summary(t);
}

async function tabs() {
  const s = await create();
  const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
  const t = [];
  for (let i = 0; i < Number(n); i++) {
    await sleep(500);
    const started = performance.now();
    const page = await browser.newPage();
    await page.evaluate(() => 1);
    t.push(performance.now() - started);
    await page.close();
  }
  await browser.disconnect();
  await end(s);
  return summary(t);
}

const out = {};
const phase = async (name) => { out[name] = { create: await creates(), tab: await tabs() }; };
await phase('none live');
const live = [];
for (let i = 0; i < Number(k); i++) live.push(await create());
await sleep(5000);
await phase(`${k} live`);
for (const s of live) await end(s);
await sleep(5000);
await phase('none live again');
console.log(JSON.stringify(out));
