// Creates back to back against several brokers, side by side (run by
// scripts/bench-creates.sh): each round sends BURST creates in a row to one broker (create ->
// WebSocket to cdp_url -> reply to Browser.getVersion, then terminate), waits for its pool
// to refill, and moves on to the next broker; brokers alternate round by round.
// usage: node --experimental-websocket bench_creates.mjs <key> <rounds> <burst> <name=gate[=create body]>...
import { createToFirstReply } from './bench_common.mjs';

const [key, roundsArg, burstArg, ...targets] = process.argv.slice(2);
const rounds = Number(roundsArg);
const burst = Number(burstArg);
const brokers = targets.map((t) => {
  const [name, gate, ...body] = t.split('=');
  return { name, api: `http://${gate}`, body: body.length ? JSON.parse(body.join('=')) : {}, times: [] };
});

async function poolFull(api) {
  for (let i = 0; i < 300; i++) {
    const metrics = await (await fetch(`${api}/metrics`)).text();
    const idle = Number((metrics.match(/^cdpgate_pool_idle (\d+)/m) || [])[1]);
    if (idle >= 2) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

for (let r = 0; r < rounds; r++) {
  for (const b of brokers) {
    await poolFull(b.api);
    await new Promise((ok) => setTimeout(ok, 1000));
    for (let i = 0; i < burst; i++) b.times.push(await createToFirstReply(b.api, key, b.body));
  }
}
const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return +s[Math.min(s.length - 1, Math.floor(s.length * p))].toFixed(1); };
console.log(JSON.stringify(Object.fromEntries(brokers.map((b) => [b.name, { p50_ms: pct(b.times, 0.5), p90_ms: pct(b.times, 0.9), p99_ms: pct(b.times, 0.99), n: b.times.length }]))));
