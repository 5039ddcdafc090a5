// The lifecycle benchmark (run by scripts/bench-lifecycle.sh), in the form public
// browser-platform benchmarks use: per iteration create -> connect -> open a page ->
// navigate to a local page -> release, each step timed, for cdpgate's process sessions
// (the node's default browser), context sessions, sessions from a named pool, and
// browserless (where a connection is the create: it launches the browser).
// Steps: create = POST /public/sessions (browserless: none, 0); connect =
// puppeteer.connect to cdp_url (browserless: the connection, its launch included);
// page = browser.newPage(); navigate = page.goto(local page, load); release =
// disconnect and POST .../terminate answered (browserless: browser.close()).
// Kinds alternate within each round, their order turned by one each round; each kind runs
// ITERATIONS at CONCURRENCY after 3 s of rest (a named pool's ready browsers are waited
// for, up to 15 s). Reports p50/p90/p99 of the whole and of each step per kind, the
// iterations/s of each round, and browserless's p50 over each kind's.
// usage: node bench_lifecycle.mjs <cdpgate_addr> <key> <browserless_ws> <page_url> <rounds> <iterations> <concurrency> [kinds]
// kinds: comma-separated of process,context,pool,browserless (default all); POOL_SIZE (2)
import puppeteer from 'puppeteer-core';

const [gate, key, blWs, pageUrl, roundsArg, itersArg, concArg, kindsArg] = process.argv.slice(2);
const [rounds, iterations, conc] = [Number(roundsArg), Number(itersArg), Number(concArg)];
const kinds = (kindsArg || 'process,context,pool,browserless').split(',');
const poolSize = Number(process.env.POOL_SIZE || 2);
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const api = `http://${gate}`;
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const call = async (method, path, body) => {
  const r = await fetch(`${api}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, json: text ? JSON.parse(text) : null };
};

async function poolReady(n) {
  for (let i = 0; i < 150; i++) {
    const pool = await call('GET', '/public/pools/lifecycle');
    if (pool.json.stats.ready >= n) return true;
    await sleep(100);
  }
  return false;
}

const STEPS = ['create', 'connect', 'page', 'navigate', 'release'];

async function visit(browser, mark) {
  const page = await browser.newPage();
  mark('page');
  await page.goto(pageUrl, { waitUntil: 'load' });
  if ((await page.title()) !== 'lifecycle') throw new Error('wrong page');
  mark('navigate');
}

function cdpgate(body) {
  return async (mark) => {
    const created = await call('POST', '/public/sessions', body);
    if (created.status !== 201) throw new Error(JSON.stringify(created));
    mark('create');
    const browser = await puppeteer.connect({ browserWSEndpoint: created.json.cdp_url, defaultViewport: null });
    mark('connect');
    await visit(browser, mark);
    await browser.disconnect();
    const ended = await call('POST', `/public/sessions/${created.json.session_id}/terminate`);
    if (ended.status >= 300) throw new Error(JSON.stringify(ended));
    mark('release');
    return created.json;
  };
}

const runs = {
  process: cdpgate({}),
  context: cdpgate({ isolation: 'context' }),
  pool: cdpgate({ pool: 'lifecycle' }),
  browserless: async (mark) => {
    mark('create');
    const browser = await puppeteer.connect({ browserWSEndpoint: blWs, defaultViewport: null });
    mark('connect');
    await visit(browser, mark);
    await browser.close();
    mark('release');
  },
};

if (kinds.includes('pool')) {
  await call('DELETE', '/public/pools/lifecycle');
  const made = await call('POST', '/public/pools', { name: 'lifecycle', size: poolSize });
  if (made.status !== 201) throw new Error(JSON.stringify(made));
  if (!(await poolReady(poolSize))) throw new Error('the pool did not fill');
}
// One untimed iteration of each, so every system has started what it starts once.
for (const kind of kinds) await runs[kind](() => {});

const results = Object.fromEntries(
  kinds.map((k) => [k, { total: [], ...Object.fromEntries(STEPS.map((s) => [s, []])), rates: [], errors: 0, pool_hits: 0 }]),
);
for (let r = 0; r < rounds; r++) {
  const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]);
  for (const kind of order) {
    await sleep(3000);
    if (kind === 'pool') await poolReady(poolSize);
    const res = results[kind];
    let next = 0;
    const started = performance.now();
    const worker = async () => {
      while (next < iterations) {
        next++;
        const t0 = performance.now();
        let last = t0;
        const times = {};
        const mark = (step) => {
          const now = performance.now();
          times[step] = now - last;
          last = now;
        };
        try {
          const made = await runs[kind](mark);
          if (made?.pool_hit) res.pool_hits++;
        } catch (e) {
          res.errors++;
          console.error(`${kind}: ${e.message}`);
          continue;
        }
        res.total.push(performance.now() - t0);
        for (const s of STEPS) res[s].push(times[s]);
      }
    };
    await Promise.all(Array.from({ length: conc }, worker));
    res.rates.push(iterations / ((performance.now() - started) / 1000));
  }
}
if (kinds.includes('pool')) await call('DELETE', '/public/pools/lifecycle');

const q = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1);
};
const out = { rounds, iterations, concurrency: conc };
for (const [kind, r] of Object.entries(results)) {
  const row = { n: r.total.length, errors: r.errors };
  if (kind === 'pool') row.pool_hits = r.pool_hits;
  row.per_s_median = +q(r.rates, 0.5).toFixed(2);
  row.per_s_rounds = r.rates.map((x) => +x.toFixed(2));
  for (const s of ['total', ...STEPS]) row[`${s}_ms`] = [q(r[s], 0.5), q(r[s], 0.9), q(r[s], 0.99)];
  out[kind] = row;
}
if (out.browserless) {
  for (const kind of kinds.filter((k) => k !== 'browserless')) {
    out[`browserless_p50_over_${kind}_p50`] = +(out.browserless.total_ms[0] / out[kind].total_ms[0]).toFixed(2);
    out[`browserless_p90_over_${kind}_p90`] = +(out.browserless.total_ms[1] / out[kind].total_ms[1]).toFixed(2);
  }
}
console.log(JSON.stringify(out));
