// What `block` saves on a heavy page, side by side in one run (run by
// scripts/bench-block.sh): three sessions of one broker, one with
// block: ["image", "media", "font"], one with block: ["ads"] (every request decided by the
// broker), one without, load the same page in turn, the HTTP
// cache off; each load's time (navigation to the load event) and the bytes the session's
// gateway received for it (network.bytes_in before and after).
// usage: node bench_block.mjs <gate> <key> <page_url> <rounds>
import puppeteer from 'puppeteer-core';

const [gate, key, site, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg);
const api = `http://${gate}`;
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };

async function session(body) {
  const created = await (await fetch(`${api}/public/sessions`, { method: 'POST', headers, body: JSON.stringify(body) })).json();
  const browser = await puppeteer.connect({ browserWSEndpoint: created.cdp_url, defaultViewport: null });
  const page = await browser.newPage();
  await page.setCacheEnabled(false);
  return { id: created.session_id, browser, page };
}
const bytesIn = async (id) => (await (await fetch(`${api}/public/sessions/${id}`, { headers })).json()).network.bytes_in;

// `ads` with a list that matches nothing here: what deciding every request in the broker
// (each one paused and continued over the keeper's connection) costs by itself.
const variants = {
  none: await session({}),
  blocked: await session({ block: ['image', 'media', 'font'] }),
  ads: await session({ block: ['ads'] }),
};
const results = Object.fromEntries(Object.keys(variants).map((k) => [k, { ms: [], bytes: [], blocked: 0 }]));
for (const s of Object.values(variants)) await s.page.goto(`${site}?warm`, { waitUntil: 'load' });
for (let i = 0; i < rounds; i++) {
  for (const [name, s] of Object.entries(variants)) {
    const before = await bytesIn(s.id);
    const started = performance.now();
    await s.page.goto(`${site}?r=${i}`, { waitUntil: 'load' });
    results[name].ms.push(performance.now() - started);
    // Requests still running after the load event (the video) finish or are cut when the
    // next page replaces this one: read the bytes once the tab is blank.
    await s.page.goto('about:blank');
    results[name].bytes.push((await bytesIn(s.id)) - before);
  }
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const out = {};
for (const [name, r] of Object.entries(results)) {
  out[name] = { load_ms_median: Math.round(median(r.ms)), bytes_in_median: median(r.bytes), loads: r.ms.length };
}
const shown = await (await fetch(`${api}/public/sessions/${variants.blocked.id}`, { headers })).json();
out.blocked.blocked_requests_total = shown.network.blocked_requests;
out.ratio = {
  load_time_blocked_over_none: +(out.blocked.load_ms_median / out.none.load_ms_median).toFixed(3),
  bytes_blocked_over_none: +(out.blocked.bytes_in_median / out.none.bytes_in_median).toFixed(4),
  load_time_ads_over_none: +(out.ads.load_ms_median / out.none.load_ms_median).toFixed(3),
};
for (const s of Object.values(variants)) await s.browser.disconnect();
console.log(JSON.stringify(out));
