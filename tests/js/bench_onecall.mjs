// One-call screenshots side by side (run by scripts/bench-onecall.sh): cdpgate's
// POST /public/screenshot and browserless's POST /screenshot, each of the same local page
// as a PNG, N calls at concurrency C per round, the systems alternating round by round.
// Each answer is checked to be a PNG. Reports calls/s (median and range over rounds) and
// call latency (p50, p90).
// usage: node bench_onecall.mjs <cdpgate_addr> <key> <browserless_addr> <token> <page_url> <rounds> <calls> <concurrency>
const [gate, key, bl, token, pageUrl, roundsArg, callsArg, concArg] = process.argv.slice(2);
const [rounds, calls, conc] = [Number(roundsArg), Number(callsArg), Number(concArg)];
const PNG = [0x89, 0x50, 0x4e, 0x47];

async function shot(url, init) {
  const r = await fetch(url, init);
  const body = new Uint8Array(await r.arrayBuffer());
  if (r.status !== 200 || !PNG.every((b, i) => body[i] === b)) {
    throw new Error(`${url}: ${r.status} ${new TextDecoder().decode(body.slice(0, 300))}`);
  }
}

const systems = {
  cdpgate: () =>
    shot(`http://${gate}/public/screenshot`, {
      method: 'POST',
      headers: { 'X-API-Key': key, 'content-type': 'application/json' },
      body: JSON.stringify({ url: pageUrl }),
    }),
  browserless: () =>
    shot(`http://${bl}/screenshot?token=${token}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: pageUrl, options: { type: 'png' }, gotoOptions: { waitUntil: 'load' } }),
    }),
};

const results = Object.fromEntries(Object.keys(systems).map((k) => [k, { rates: [], latencies: [] }]));
// One call each first: browsers started, caches warm.
for (const call of Object.values(systems)) await call();
for (let r = 0; r < rounds; r++) {
  for (const [name, call] of Object.entries(systems)) {
    await new Promise((ok) => setTimeout(ok, 2000)); // the machine settles; spares refill
    let next = 0;
    const started = performance.now();
    const worker = async () => {
      while (next < calls) {
        next++;
        const t = performance.now();
        await call();
        results[name].latencies.push(performance.now() - t);
      }
    };
    await Promise.all(Array.from({ length: conc }, worker));
    results[name].rates.push(calls / ((performance.now() - started) / 1000));
  }
}
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };
const out = { concurrency: conc, rounds, calls_per_round: calls };
for (const [name, r] of Object.entries(results)) {
  out[name] = {
    calls_per_s_median: +q(r.rates, 0.5).toFixed(2),
    calls_per_s_range: [+Math.min(...r.rates).toFixed(2), +Math.max(...r.rates).toFixed(2)],
    latency_p50_ms: Math.round(q(r.latencies, 0.5)),
    latency_p90_ms: Math.round(q(r.latencies, 0.9)),
  };
}
out.ratio_cdpgate_to_browserless = +(out.cdpgate.calls_per_s_median / out.browserless.calls_per_s_median).toFixed(2);
console.log(JSON.stringify(out));
