// Named pools (run by scripts/bench-pools.sh): a profile logged in on a local site, a pool
// of it, then per round, side by side: create -> first CDP reply of a session taken from
// the pool at rest (every ready browser there), of a cold profile session (a browser
// launched on a copy of the profile), and of a default session (a warm browser) for
// reference; and a session taken from a pool of isolation "context" on the same profile (a
// ready context in a shared browser, its storage state loaded). Each session is checked
// logged in, or not for the default (not timed).
// usage: node --experimental-websocket bench_pools.mjs <api> <key> <site> <rounds> <size>
import puppeteer from 'puppeteer-core';

const [api, key, site, rounds, size] = process.argv.slice(2);
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const call = async (method, path, body) => {
  const r = await fetch(`${api}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
};
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return +s[Math.floor(s.length / 2)].toFixed(1); };
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// create -> WebSocket to cdp_url -> answer to Browser.getVersion, timed; the session kept.
async function firstReply(body) {
  const started = performance.now();
  const created = await call('POST', '/public/sessions', body);
  if (created.status !== 201) throw new Error(JSON.stringify(created));
  const ws = new WebSocket(created.json.cdp_url);
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  ws.send(JSON.stringify({ id: 1, method: 'Browser.getVersion', params: {} }));
  await new Promise((ok) => { ws.onmessage = ok; });
  const took = performance.now() - started;
  ws.close();
  return { took, session: created.json };
}

async function loggedIn(session) {
  const browser = await puppeteer.connect({ browserWSEndpoint: session.cdp_url, defaultViewport: null });
  const page = await browser.newPage();
  await page.goto(`${site}/check`);
  const cookies = await page.evaluate(() => document.cookie);
  await browser.disconnect();
  return cookies.includes('sid=s3cr3t');
}

async function ready(n, name = 'bench') {
  for (let i = 0; i < 600; i++) {
    const pool = await call('GET', `/public/pools/${name}`);
    if (pool.json.stats.ready === n) return pool.json;
    await sleep(100);
  }
  throw new Error('the pool did not refill');
}

const profile = (await call('POST', '/public/browser-profiles', { name: 'bench' })).json.id;
const login = (await call('POST', '/public/sessions', { profile_id: profile })).json;
{
  const browser = await puppeteer.connect({ browserWSEndpoint: login.cdp_url, defaultViewport: null });
  const page = await browser.newPage();
  await page.goto(`${site}/login`);
  await browser.disconnect();
  await call('POST', `/public/sessions/${login.session_id}/terminate`);
}
const made = await call('POST', '/public/pools', { name: 'bench', size: Number(size), profile_id: profile });
if (made.status !== 201) throw new Error(JSON.stringify(made));
await ready(Number(size));
const contexts = await call('POST', '/public/pools', { name: 'ctx', size: Number(size), isolation: 'context', profile_id: profile });
if (contexts.status !== 201) throw new Error(JSON.stringify(contexts));
await ready(Number(size), 'ctx');

const out = { pool: [], context_pool: [], cold: [], default: [] };
let refill = [];
for (let r = 0; r < Number(rounds); r++) {
  for (const kind of r % 2 ? ['cold', 'default', 'context_pool', 'pool'] : ['pool', 'context_pool', 'default', 'cold']) {
    const body = { pool: { pool: 'bench' }, context_pool: { pool: 'ctx' }, cold: { profile_id: profile, persist_changes: false }, default: {} }[kind];
    const { took, session } = await firstReply(body);
    if (kind.endsWith('pool') && session.pool_hit !== true) throw new Error(`a ${kind} take at rest missed`);
    if ((await loggedIn(session)) !== (kind !== 'default')) throw new Error(`a ${kind} session is not as logged in as it should be`);
    out[kind].push(took);
    await call('POST', `/public/sessions/${session.session_id}/terminate`);
    const stats = await ready(Number(size));
    await ready(Number(size), 'ctx');
    if (kind === 'pool') refill.push(stats.stats.last_refill_ms);
    // The warm default browser is replaced too, at rest again.
    await sleep(1500);
  }
}
const summary = {
  pool_first_reply_p50_ms: median(out.pool),
  context_pool_first_reply_p50_ms: median(out.context_pool),
  cold_profile_first_reply_p50_ms: median(out.cold),
  default_warm_first_reply_p50_ms: median(out.default),
  ratio_cold_over_pool: +(median(out.cold) / median(out.pool)).toFixed(1),
  refill_p50_ms: median(refill),
  pool_runs_ms: out.pool.map((x) => +x.toFixed(1)),
  context_pool_runs_ms: out.context_pool.map((x) => +x.toFixed(1)),
  cold_runs_ms: out.cold.map((x) => +x.toFixed(1)),
  default_runs_ms: out.default.map((x) => +x.toFixed(1)),
};
console.log(JSON.stringify(summary));
