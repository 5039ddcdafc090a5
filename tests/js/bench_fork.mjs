// Fork of a logged-in context session into N (run by scripts/bench-fork.sh): a source
// logged in on a local site (a session cookie, localStorage, sessionStorage) with two tabs,
// one scrolled; then, for each N, `POST /public/sessions/{id}/fork {"count": N}` timed to
// its 201 (every fork's state written) and to the first CDP reply of every fork.
// usage: node --experimental-websocket bench_fork.mjs <api> <key> <site> <rounds> <N,N,...>
import puppeteer from 'puppeteer-core';
import { createToFirstReply } from './bench_common.mjs';

const [api, key, site, rounds, counts] = process.argv.slice(2);
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const post = async (path, body) => (await fetch(`${api}${path}`, { method: 'POST', headers, body: JSON.stringify(body) }));
const firstReply = (url) => new Promise((ok, fail) => {
  const ws = new WebSocket(url);
  ws.onerror = fail;
  ws.onopen = () => ws.send(JSON.stringify({ id: 1, method: 'Browser.getVersion', params: {} }));
  ws.onmessage = () => { ws.close(); ok(); };
});
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return +s[Math.floor(s.length / 2)].toFixed(1); };

// A warm-up create, so the shared browser is started before anything is timed.
await createToFirstReply(api, key, { isolation: 'context' });
const source = await (await post('/public/sessions', { isolation: 'context', ttl: 3600 })).json();
const browser = await puppeteer.connect({ browserWSEndpoint: source.cdp_url, defaultViewport: null });
const [first] = await browser.pages();
await first.goto(`${site}/login`);
await first.goto(`${site}/page/a`);
const second = await browser.newPage();
await second.goto(`${site}/page/b`);
await second.evaluate(() => { sessionStorage.setItem('tab', 'second'); scrollTo(0, 1234); });

const out = {};
const ns = counts.split(',').map(Number);
for (const n of ns) out[n] = { response_ms: [], all_replied_ms: [] };
for (let r = 0; r < Number(rounds); r++) {
  for (const n of ns) {
    const t0 = performance.now();
    const answer = await post(`/public/sessions/${source.session_id}/fork`, { count: n });
    const t1 = performance.now();
    const body = await answer.json();
    if (answer.status !== 201) throw new Error(JSON.stringify(body));
    await Promise.all(body.sessions.map((s) => firstReply(s.cdp_url)));
    const t2 = performance.now();
    out[n].response_ms.push(t1 - t0);
    out[n].all_replied_ms.push(t2 - t0);
    await Promise.all(body.sessions.map((s) => post(`/public/sessions/${s.session_id}/terminate`, {})));
    // Let the disposed contexts go before the next round.
    await new Promise((ok) => setTimeout(ok, 1500));
  }
}
await browser.disconnect();
await post(`/public/sessions/${source.session_id}/terminate`, {});
const summary = {};
for (const n of ns) {
  summary[`N=${n}`] = {
    fork_201_median_ms: median(out[n].response_ms),
    all_first_reply_median_ms: median(out[n].all_replied_ms),
    runs_ms: out[n].response_ms.map((x) => +x.toFixed(1)),
  };
}
console.log(JSON.stringify(summary));
