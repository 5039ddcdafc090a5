// The soak run's client (scripts/soak.sh): creates and ends sessions of every kind, without
// pause, at a steady rate and concurrency, the way real users do, including the ones who
// go wrong: clients killed mid-session, tabs crashed, sessions left to their TTL or their
// idle timeout. It serves its own pages and proxy on loopback and stops by itself.
//
//   node soak.mjs BASE KEY SECONDS RATE_PER_MINUTE CONCURRENCY SUMMARY.json
//
// Every job is bounded in time; a job that fails is counted by kind with its first error
// messages, and the run goes on: the broker's health is judged by scripts/soak_report.py
// from the samples, the failures are reported beside it.
import http from 'node:http';
import net from 'node:net';
import { writeFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';
import WebSocket from 'ws';

const [base, key, seconds, ratePerMinute, concurrency, summaryPath] = process.argv.slice(2);
const deadline = Date.now() + Number(seconds) * 1000;
const gapMs = 60000 / Number(ratePerMinute);
const maxRunning = Number(concurrency);
const JOB_TIMEOUT_MS = 60000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The site: a small page with a script, an image and a cookie.
const site = http.createServer((req, res) => {
  if (req.url.startsWith('/img')) {
    res.writeHead(200, { 'content-type': 'image/svg+xml' });
    res.end('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>');
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html', 'set-cookie': `visit=${Date.now()}` });
  res.end(`<!doctype html><title>soak</title><h1>soak ${req.url}</h1><img src="/img">
    <script>localStorage.setItem('seen', String(Date.now()));</script>`);
});
// A forward proxy for the `proxy` option: plain HTTP requests answered by the site, CONNECT
// tunnelled to the site's port whatever host was named.
const proxy = http.createServer((req, res) => {
  const upstream = http.request(
    { host: '127.0.0.1', port: site.address().port, path: new URL(req.url).pathname, headers: req.headers },
    (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on('error', () => res.destroy());
  req.pipe(upstream);
});
proxy.on('connect', (req, socket) => {
  const upstream = net.connect(site.address().port, '127.0.0.1', () => {
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    upstream.pipe(socket).pipe(upstream);
  });
  upstream.on('error', () => socket.destroy());
  socket.on('error', () => upstream.destroy());
});
await new Promise((r) => site.listen(0, '127.0.0.1', r));
await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
const page = (path) => `http://127.0.0.1:${site.address().port}${path}`;

async function api(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { 'x-api-key': key, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 200)}`);
  return text ? JSON.parse(text) : null;
}

const create = (options) => api('POST', '/public/sessions', { ttl: 120, ...options });
const end = (id) => api('DELETE', `/public/sessions/${id}`);

async function waitEnded(id, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const s = await api('GET', `/public/sessions/${id}`);
    if (s.status !== 'active') return s;
    await sleep(500);
  }
  throw new Error(`session ${id} still active after ${ms} ms`);
}

// Connects Puppeteer, visits the site in a new tab, checks the page, closes the tab.
async function visit(cdpUrl, path = '/') {
  const browser = await puppeteer.connect({ browserWSEndpoint: cdpUrl, defaultViewport: null });
  try {
    const tab = await browser.newPage();
    await tab.goto(page(path), { waitUntil: 'load', timeout: 20000 });
    const heading = await tab.$eval('h1', (h) => h.textContent);
    if (!heading.startsWith('soak')) throw new Error(`unexpected page: ${heading}`);
    await tab.close();
  } finally {
    await browser.disconnect();
  }
}

const profiles = [];

const jobs = {
  async process() {
    const s = await create({ isolation: 'process' });
    await visit(s.cdp_url, '/process');
    await end(s.session_id);
  },
  async context() {
    const s = await create({ isolation: 'context' });
    await visit(s.cdp_url, '/context');
    await end(s.session_id);
  },
  async profile(slot) {
    // One profile per slot, so that two jobs never ask for the same one at once.
    const s = await create({ profile_id: profiles[slot], persist_changes: true });
    await visit(s.cdp_url, '/profile');
    await end(s.session_id);
  },
  async recorded() {
    const s = await create({ record: true });
    const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
    const [tab] = await browser.pages();
    await tab.goto(page('/recorded'), { timeout: 20000 });
    await sleep(1500);
    await browser.disconnect();
    await end(s.session_id);
    const res = await fetch(`${base}/public/sessions/${s.session_id}/recording`, { headers: { 'x-api-key': key } });
    await res.arrayBuffer();
  },
  async proxied() {
    const s = await create({ proxy: { server: `http://127.0.0.1:${proxy.address().port}` } });
    const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
    try {
      const tab = await browser.newPage();
      // Any name: the proxy answers for it.
      await tab.goto(`http://soak.example/proxied`, { timeout: 20000 });
      const heading = await tab.$eval('h1', (h) => h.textContent);
      if (heading !== 'soak /proxied') throw new Error(`through the proxy: ${heading}`);
    } finally {
      await browser.disconnect();
    }
    await end(s.session_id);
  },
  async killed() {
    // A client that dies mid-session (no close frame), then nobody: the idle timeout ends it.
    const s = await create({ idle_timeout: 3, isolation: 'context' });
    const ws = new WebSocket(s.cdp_url);
    await new Promise((resolve, reject) => {
      ws.on('open', () => ws.send(JSON.stringify({ id: 1, method: 'Target.getTargets' })));
      ws.on('message', resolve);
      ws.on('error', reject);
    });
    ws._socket.destroy();
    const ended = await waitEnded(s.session_id, 20000);
    if (ended.end_reason !== 'idle') throw new Error(`killed client: ended ${ended.end_reason}`);
  },
  async crashed() {
    const s = await create({});
    const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
    try {
      const tab = await browser.newPage();
      await tab.goto(page('/crash'), { timeout: 20000 });
      const cdp = await tab.createCDPSession();
      // Chrome never answers Page.crash (the renderer is gone); Puppeteer says so by 'error'.
      // A one-process browser goes with its tab: the connection ends instead.
      const crashed = new Promise((resolve) => {
        tab.once('error', resolve);
        if (singleProcess) browser.once('disconnected', resolve);
      });
      cdp.send('Page.crash').catch(() => {});
      await Promise.race([crashed, sleep(10000).then(() => Promise.reject(new Error('no crash seen')))]);
      if (singleProcess) {
        // A one-process browser (single_process_shell) dies with its tab: the session ends.
        const ended = await waitEnded(s.session_id, 20000);
        if (ended.end_reason !== 'browser exited') throw new Error(`crash: ended ${ended.end_reason}`);
        return;
      }
      await tab.close().catch(() => {});
      const next = await browser.newPage();
      await next.goto(page('/after-crash'), { timeout: 20000 });
    } finally {
      await browser.disconnect();
    }
    await end(s.session_id);
  },
  async ttl() {
    // Connected when the TTL falls: the broker cuts the client off and ends the session.
    const s = await create({ ttl: 4 });
    const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
    const gone = new Promise((r) => browser.once('disconnected', r));
    const [tab] = await browser.pages();
    await tab.goto(page('/ttl'), { timeout: 20000 }).catch(() => {});
    await Promise.race([gone, sleep(20000)]);
    const ended = await waitEnded(s.session_id, 10000);
    if (ended.status !== 'expired') throw new Error(`ttl: status ${ended.status}`);
  },
  async idle() {
    const s = await create({ idle_timeout: 2 });
    const ended = await waitEnded(s.session_id, 20000);
    if (ended.end_reason !== 'idle') throw new Error(`idle: ended ${ended.end_reason}`);
  },
};
// SOAK_SINGLE_PROCESS=1: the broker runs process sessions' shells as one process, so a
// crashed tab ends its session instead of leaving the browser to open another.
const singleProcess = process.env.SOAK_SINGLE_PROCESS === '1';
// SOAK_KINDS=process,crashed runs only those (to look into one kind's failures).
const kinds = process.env.SOAK_KINDS ? process.env.SOAK_KINDS.split(',') : Object.keys(jobs);

for (let slot = 0; slot < maxRunning; slot++) {
  const p = await api('POST', '/public/browser-profiles', { name: `soak-${process.pid}-${slot}` });
  profiles.push(p.id);
}

const summary = { started: new Date().toISOString(), jobs: {}, failures: {}, errors: {} };
for (const kind of kinds) {
  if (!jobs[kind]) throw new Error(`SOAK_KINDS: no job ${kind}; there are ${Object.keys(jobs)}`);
  summary.jobs[kind] = 0;
  summary.failures[kind] = 0;
  summary.errors[kind] = [];
}
const freeSlots = Array.from({ length: maxRunning }, (_, i) => i);
let running = 0;
let next = 0;

async function runJob(kind, slot) {
  try {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${JOB_TIMEOUT_MS} ms`)), JOB_TIMEOUT_MS);
    });
    await Promise.race([jobs[kind](slot), timeout]).finally(() => clearTimeout(timer));
    summary.jobs[kind] += 1;
  } catch (e) {
    summary.failures[kind] += 1;
    console.log(`${new Date().toISOString()} ${kind} failed: ${String(e.message || e).slice(0, 300)}`);
    if (summary.errors[kind].length < 5) summary.errors[kind].push(String(e.message || e).slice(0, 300));
  } finally {
    running -= 1;
    freeSlots.push(slot);
  }
}

let lastReport = Date.now();
while (Date.now() < deadline) {
  const started = Date.now();
  if (running < maxRunning) {
    running += 1;
    runJob(kinds[next++ % kinds.length], freeSlots.shift());
  }
  if (Date.now() - lastReport > 60000) {
    lastReport = Date.now();
    const done = Object.values(summary.jobs).reduce((a, b) => a + b, 0);
    const failed = Object.values(summary.failures).reduce((a, b) => a + b, 0);
    console.log(`${new Date().toISOString()} jobs done ${done}, failed ${failed}, running ${running}`);
  }
  await sleep(Math.max(0, gapMs - (Date.now() - started)));
}
const drainUntil = Date.now() + JOB_TIMEOUT_MS + 5000;
while (running > 0 && Date.now() < drainUntil) await sleep(200);
for (const id of profiles) await api('DELETE', `/public/browser-profiles/${id}`).catch(() => {});
summary.ended = new Date().toISOString();
writeFileSync(summaryPath, JSON.stringify(summary, null, 2));
site.close();
proxy.close();
process.exit(0);
