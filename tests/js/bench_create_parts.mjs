// Creates at rest, split into their parts, against one running broker: POST answered, the
// WebSocket to cdp_url open, the first CDP reply (Browser.getVersion); 1.5 s between
// creates so that spares are ready; each session ended before the next. Prints medians.
// usage: node --experimental-websocket bench_create_parts.mjs <api> <key> <count> <isolation> [<create body JSON>]
const [api, key, count, isolation, extra] = process.argv.slice(2);
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const body = JSON.stringify({ isolation, ...(extra ? JSON.parse(extra) : {}) });
const rows = [];
for (let i = 0; i < Number(count); i++) {
  await new Promise((r) => setTimeout(r, 1500));
  const started = performance.now();
  const created = await (await fetch(`${api}/public/sessions`, { method: 'POST', headers, body })).json();
  if (!created.cdp_url) throw new Error(JSON.stringify(created));
  const answered = performance.now();
  const ws = new WebSocket(created.cdp_url);
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  const open = performance.now();
  ws.send(JSON.stringify({ id: 1, method: 'Browser.getVersion', params: {} }));
  await new Promise((ok) => { ws.onmessage = ok; });
  const replied = performance.now();
  ws.close();
  await fetch(`${api}/public/sessions/${created.session_id}/terminate`, { method: 'POST', headers });
  rows.push([answered - started, open - answered, replied - open, replied - started]);
}
const median = (k) => {
  const sorted = rows.map((r) => r[k]).sort((a, b) => a - b);
  return +sorted[Math.floor(sorted.length / 2)].toFixed(2);
};
console.log(JSON.stringify({ post_ms: median(0), open_ms: median(1), reply_ms: median(2), total_ms: median(3), n: rows.length }));
