// Fork of a logged-in context session into N (run by scripts/bench-fork.sh): a source
// logged in on a local site (a session cookie, localStorage, sessionStorage) with two tabs,
// one scrolled; then, for each N, `POST /public/sessions/{id}/fork {"count": N}` timed to
// its 201 (every fork's state written) and to the first CDP reply of every fork.
// Several brokers (name=api,name=api) each get a source, and are alternated fork by fork.
// With DATA_DIR (the first broker's data_dir) it then forks the largest N once more on the
// first broker, keeps the forks, and reads the PSS of every process in the process groups
// of the browsers under DATA_DIR before and after: memory per forked session (each with
// the source's two tabs).
// WAIT_UNTIL=load,start runs each broker's forks with each `wait_until` (alternated too).
// TABS=1: a source with its first tab only (each fork then opens no tab of its own).
// usage: node --experimental-websocket bench_fork.mjs <api|name=api,...> <key> <site> <rounds> <N,N,...>
import { readFileSync, readdirSync } from 'fs';
import puppeteer from 'puppeteer-core';
import { createToFirstReply } from './bench_common.mjs';

const [apis, key, site, rounds, counts] = process.argv.slice(2);
const targets = apis.split(',').map((t) => (t.includes('=') ? t.split('=') : ['this', t]));
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const post = async (api, path, body) =>
  await fetch(`${api}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
const firstReply = (url) => new Promise((ok, fail) => {
  const ws = new WebSocket(url);
  ws.onerror = fail;
  ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'Browser.getVersion', params: {} }));
  ws.onmessage = () => { ws.close(); ok(); };
});
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1); };
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

async function loggedInSource(api) {
  // A warm-up create, so the shared browser is started before anything is timed.
  await createToFirstReply(api, key, { isolation: 'context' });
  const source = await (await post(api, '/public/sessions', { isolation: 'context', ttl: 3600 })).json();
  const browser = await puppeteer.connect({ browserWSEndpoint: source.cdp_url, defaultViewport: null });
  const [first] = await browser.pages();
  await first.goto(`${site}/login`);
  await first.goto(`${site}/page/a`);
  if (process.env.TABS !== '1') {
    const second = await browser.newPage();
    await second.goto(`${site}/page/b`);
    await second.evaluate(() => { sessionStorage.setItem('tab', 'second'); scrollTo(0, 1234); });
  }
  return { source, browser };
}

const sources = {};
for (const [name, api] of targets) sources[name] = await loggedInSource(api);
const ns = counts.split(',').map(Number);
const modes = (process.env.WAIT_UNTIL || 'load').split(',');
// Each broker with each mode: [label, api, mode, broker].
const systems = targets.flatMap(([name, api]) =>
  modes.map((mode) => [modes.length > 1 ? `${name}/${mode}` : name, api, mode, name]));
const out = {};
for (const [label] of systems) {
  out[label] = {};
  for (const n of ns) out[label][n] = { response_ms: [], all_replied_ms: [] };
}
for (let r = 0; r < Number(rounds); r++) {
  for (const n of ns) {
    for (const [label, api, mode, name] of r % 2 ? [...systems].reverse() : systems) {
      const t0 = performance.now();
      const asked = { count: n, wait_until: mode };
      const answer = await post(api, `/public/sessions/${sources[name].source.session_id}/fork`, asked);
      const t1 = performance.now();
      const body = await answer.json();
      if (answer.status !== 201) throw new Error(JSON.stringify(body));
      await Promise.all(body.sessions.map((s) => firstReply(s.cdp_url)));
      const t2 = performance.now();
      out[label][n].response_ms.push(t1 - t0);
      out[label][n].all_replied_ms.push(t2 - t0);
      await Promise.all(body.sessions.map((s) => post(api, `/public/sessions/${s.session_id}/terminate`, {})));
      // Let the disposed contexts go before the next fork.
      await sleep(1500);
    }
  }
}

// PSS (KiB) of every process in the process groups of the browsers under DATA_DIR.
function pssKib(root) {
  const procs = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  const pgrp = (p) => Number(readFileSync(`/proc/${p}/stat`, 'utf8').split(')').pop().trim().split(/\s+/)[2]);
  const groups = new Set();
  for (const p of procs) {
    try {
      if (readFileSync(`/proc/${p}/cmdline`).includes(root)) groups.add(pgrp(p));
    } catch { /* gone */ }
  }
  let total = 0;
  for (const p of procs) {
    try {
      if (!groups.has(pgrp(p))) continue;
      const m = readFileSync(`/proc/${p}/smaps_rollup`, 'utf8').match(/^Pss:\s+(\d+)/m);
      if (m) total += Number(m[1]);
    } catch { /* gone */ }
  }
  return total;
}
let memory;
if (process.env.DATA_DIR) {
  const [name, api] = targets[0];
  const n = Math.max(...ns);
  await sleep(3000);
  const before = pssKib(process.env.DATA_DIR);
  const answer = await post(api, `/public/sessions/${sources[name].source.session_id}/fork`, { count: n });
  const body = await answer.json();
  if (answer.status !== 201) throw new Error(JSON.stringify(body));
  await sleep(3000);
  const after = pssKib(process.env.DATA_DIR);
  memory = {
    broker: name, forks: n, pss_before_mib: +(before / 1024).toFixed(1), pss_after_mib: +(after / 1024).toFixed(1),
    per_fork_mib: +((after - before) / 1024 / n).toFixed(1),
  };
  await Promise.all(body.sessions.map((s) => post(api, `/public/sessions/${s.session_id}/terminate`, {})));
}
const summary = {};
for (const [name, api] of targets) {
  await sources[name].browser.disconnect();
  await post(api, `/public/sessions/${sources[name].source.session_id}/terminate`, {});
}
for (const [label] of systems) {
  for (const n of ns) {
    const o = out[label][n];
    summary[`${label} N=${n}`] = {
      fork_201_p50_ms: q(o.response_ms, 0.5),
      all_first_reply_p50_ms: q(o.all_replied_ms, 0.5),
      all_first_reply_p90_ms: q(o.all_replied_ms, 0.9),
      fork_201_runs_ms: o.response_ms.map((x) => +x.toFixed(1)),
      all_first_reply_runs_ms: o.all_replied_ms.map((x) => +x.toFixed(1)),
    };
  }
}
if (memory) summary.memory = memory;
console.log(JSON.stringify(summary));
