// The client side of scripts/bench-density.sh. Needs Node's WebSocket (node
// --experimental-websocket on Node 20). Prints one JSON line.
// usage:
//   node bench_density.mjs open <api> <key> <count> <isolation> <site>
//     creates COUNT sessions and opens SITE in each one's first tab (they stay open)
//   node bench_density.mjs latency <api> <key> <isolation> <rest|burst> <count>
//     create -> first CDP reply, COUNT times, 1.5 s apart (rest) or in a row (burst)
//   node bench_density.mjs health <api> <count>
//     GET /health COUNT times in a row
//   node bench_density.mjs roundtrip <api> <key> <count> <kind>...
//     Runtime.evaluate('1') on a page, COUNT times in a row, per kind of session,
//     alternated; a kind is an isolation, with "+record" for a recorded session and
//     "+animate" for a page that repaints every frame (the recording's worst case)
import { createToFirstReply } from './bench_common.mjs';

const [mode, ...args] = process.argv.slice(2);
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1) : null;
};

// One CDP connection: send a command, wait for its answer or an event.
function connect(url) {
  const ws = new WebSocket(url);
  let next = 0;
  const waiting = new Map();
  const listeners = [];
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.id && waiting.has(m.id)) {
      waiting.get(m.id)(m);
      waiting.delete(m.id);
    } else {
      listeners.forEach((l) => l(m));
    }
  };
  const opened = new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  return {
    opened,
    ws,
    send(method, params = {}, sessionId) {
      const id = ++next;
      ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
      return new Promise((ok) => waiting.set(id, ok));
    },
    event(method) {
      return new Promise((ok) => listeners.push((m) => { if (m.method === method) ok(m); }));
    },
  };
}

async function openOne(api, key, isolation, site) {
  const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
  const started = performance.now();
  const created = await (await fetch(`${api}/public/sessions`, { method: 'POST', headers, body: JSON.stringify({ isolation, ttl: 3600 }) })).json();
  if (!created.cdp_url) throw new Error(JSON.stringify(created));
  const createMs = performance.now() - started;
  const cdp = connect(created.cdp_url);
  await cdp.opened;
  const { result } = await cdp.send('Target.getTargets');
  const page = result.targetInfos.find((t) => t.type === 'page');
  const { result: attached } = await cdp.send('Target.attachToTarget', { targetId: page.targetId, flatten: true });
  await cdp.send('Page.enable', {}, attached.sessionId);
  const loaded = cdp.event('Page.loadEventFired');
  await cdp.send('Page.navigate', { url: site }, attached.sessionId);
  await loaded;
  cdp.ws.close();
  return createMs;
}

let out;
if (mode === 'open') {
  const [api, key, count, isolation, site] = args;
  const times = [];
  let failed = 0;
  let error = null;
  for (let i = 0; i < Number(count); i++) {
    try {
      times.push(await openOne(api, key, isolation, site));
    } catch (e) {
      failed++;
      error = String(e.message || e).slice(0, 300);
      break;
    }
  }
  out = { opened: times.length, failed, error, create_p50_ms: pct(times, 0.5), create_p90_ms: pct(times, 0.9) };
} else if (mode === 'latency') {
  const [api, key, isolation, how, count] = args;
  const times = [];
  for (let i = 0; i < Number(count); i++) {
    if (how === 'rest') await new Promise((r) => setTimeout(r, 1500));
    times.push(await createToFirstReply(api, key, { isolation }));
  }
  out = { p50_ms: pct(times, 0.5), p90_ms: pct(times, 0.9), max_ms: pct(times, 1), n: times.length };
} else if (mode === 'roundtrip') {
  const [api, key, count, ...isolations] = args;
  const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
  const pages = {};
  const animated = 'data:text/html,<body><script>(function f(){document.body.style.background=' +
    '"hsl("+(performance.now()/10%25360)+",80%25,50%25)";requestAnimationFrame(f)})()</script></body>';
  for (const kind of isolations) {
    const [isolation, ...flags] = kind.split('+');
    const body = JSON.stringify({ isolation, record: flags.includes('record') });
    const created = await (await fetch(`${api}/public/sessions`, { method: 'POST', headers, body })).json();
    const cdp = connect(created.cdp_url);
    await cdp.opened;
    const { result } = await cdp.send('Target.getTargets');
    const page = result.targetInfos.find((t) => t.type === 'page');
    const { result: attached } = await cdp.send('Target.attachToTarget', { targetId: page.targetId, flatten: true });
    if (flags.includes('animate')) await cdp.send('Page.navigate', { url: animated }, attached.sessionId);
    pages[kind] = { cdp, session: attached.sessionId, times: [] };
  }
  for (let round = 0; round < 10; round++) {
    for (const isolation of isolations) {
      const { cdp, session, times } = pages[isolation];
      for (let i = 0; i < Number(count) / 10; i++) {
        const t = performance.now();
        await cdp.send('Runtime.evaluate', { expression: '1', returnByValue: true }, session);
        times.push((performance.now() - t) * 1000);
      }
    }
  }
  out = Object.fromEntries(isolations.map((i) => [i, { p50_us: pct(pages[i].times, 0.5), p90_us: pct(pages[i].times, 0.9), n: pages[i].times.length }]));
  Object.values(pages).forEach((p) => p.cdp.ws.close());
} else {
  const [api, count] = args;
  const times = [];
  for (let i = 0; i < Number(count); i++) {
    const t = performance.now();
    await (await fetch(`${api}/health`)).text();
    times.push(performance.now() - t);
  }
  out = { p50_ms: pct(times, 0.5), p99_ms: pct(times, 0.99), n: times.length };
}
console.log(JSON.stringify(out));
