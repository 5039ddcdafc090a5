// One-call renders side by side (run by scripts/bench-onecall.sh), N calls at concurrency C
// per round, the systems alternating round by round, each answer checked. DOOR
// `screenshot`: cdpgate's POST /public/screenshot and browserless's POST /screenshot, a PNG
// of the same local page each. DOOR `markdown`: cdpgate's POST /public/markdown of a local
// article (its headings and links checked), cdpgate's POST /public/content and
// browserless's POST /content (the rendered HTML: browserless has no markdown call, so its
// nearest is measured, without the conversion it leaves to the caller). Reports calls/s
// (median and range over rounds) and call latency (p50, p90).
// usage: node bench_onecall.mjs <cdpgate_addr> <key> <browserless_addr> <token> <page_url> <rounds> <calls> <concurrency> [door]
const [gate, key, bl, token, pageUrl, roundsArg, callsArg, concArg, door = 'screenshot'] = process.argv.slice(2);
const [rounds, calls, conc] = [Number(roundsArg), Number(callsArg), Number(concArg)];
const PNG = [0x89, 0x50, 0x4e, 0x47];
const isPng = (body) => PNG.every((b, i) => body[i] === b);
const text = (body) => new TextDecoder().decode(body);
// The article's last section heading and one of its links, as markdown and as HTML.
const isMarkdown = (body) => /^## Section 12$/m.test(text(body)) && /\]\(http:\/\/127\.0\.0\.1:\d+\/ref\/12\)/.test(text(body));
const isHtml = (body) => text(body).includes('<h2>Section 12</h2>');

async function call(url, init, ok) {
  const r = await fetch(url, init);
  const body = new Uint8Array(await r.arrayBuffer());
  if (r.status !== 200 || !ok(body)) {
    throw new Error(`${url}: ${r.status} ${text(body.slice(0, 300))}`);
  }
}

const post = (body) => ({ method: 'POST', headers: { 'X-API-Key': key, 'content-type': 'application/json' }, body: JSON.stringify(body) });
const doors = {
  screenshot: {
    cdpgate: () => call(`http://${gate}/public/screenshot`, post({ url: pageUrl }), isPng),
    browserless: () =>
      call(
        `http://${bl}/screenshot?token=${token}`,
        post({ url: pageUrl, options: { type: 'png' }, gotoOptions: { waitUntil: 'load' } }),
        isPng,
      ),
  },
  markdown: {
    cdpgate_markdown: () => call(`http://${gate}/public/markdown`, post({ url: pageUrl }), isMarkdown),
    cdpgate_content: () => call(`http://${gate}/public/content`, post({ url: pageUrl }), isHtml),
    browserless_content: () =>
      call(`http://${bl}/content?token=${token}`, post({ url: pageUrl, gotoOptions: { waitUntil: 'load' } }), isHtml),
  },
};
const systems = doors[door];
if (!systems) throw new Error(`door ${door}: screenshot or markdown`);

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
const out = { door, concurrency: conc, rounds, calls_per_round: calls };
for (const [name, r] of Object.entries(results)) {
  out[name] = {
    calls_per_s_median: +q(r.rates, 0.5).toFixed(2),
    calls_per_s_range: [+Math.min(...r.rates).toFixed(2), +Math.max(...r.rates).toFixed(2)],
    latency_p50_ms: Math.round(q(r.latencies, 0.5)),
    latency_p90_ms: Math.round(q(r.latencies, 0.9)),
  };
}
const [peer] = Object.keys(systems).filter((n) => n.startsWith('browserless'));
for (const name of Object.keys(systems).filter((n) => n.startsWith('cdpgate'))) {
  out[`ratio_${name}_to_${peer}`] = +(out[name].calls_per_s_median / out[peer].calls_per_s_median).toFixed(2);
}
console.log(JSON.stringify(out));
