// What one maximal message costs the broker's memory where it parses messages: a context
// session's cdp_url (its CDP filter) and a live view link. For each case: the broker's
// peak resident memory (VmHWM, reset first through /proc/PID/clear_refs) minus its
// resident memory just before, over the message's size. Prints one JSON object per case.
// usage: node bench_parse.mjs <broker address> <api key> <broker pid> <max parsed bytes> [label]
import fs from 'node:fs';
import WebSocket from 'ws';

const [gate, key, pid, maxArg, label = 'cdpgate'] = process.argv.slice(2);
const max = Number(maxArg);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function memory() {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name) => Number(status.match(new RegExp(`${name}:\\s+(\\d+)`))[1]);
  return { rss: kb('VmRSS') * 1024, hwm: kb('VmHWM') * 1024 };
}

/// `[0,0,…,0]` of `bytes` bytes or one less: small tokens, what explodes a JSON tree.
function zeros(bytes) {
  return '[' + '0,'.repeat(Math.floor((bytes - 3) / 2)) + '0]';
}

async function connect(url) {
  const ws = new WebSocket(url, { maxPayload: 512 * 1024 * 1024 });
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  return ws;
}

/// Sends `text` and waits for the answer `id` (or any message when `id` is null) or the close.
function answer(ws, text, id) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ outcome: 'timeout' }), 120000);
    ws.on('message', (m) => {
      const reply = JSON.parse(m);
      if (id === null || reply.id === id) {
        clearTimeout(timer);
        resolve({ outcome: reply.error ? `error ${reply.error.code}` : 'answered' });
      }
    });
    ws.once('close', (code) => { clearTimeout(timer); resolve({ outcome: `close ${code}` }); });
    ws.send(text);
  });
}

async function call(ws, id, method, params = {}, sessionId) {
  const message = { id, method, params };
  if (sessionId) message.sessionId = sessionId;
  return new Promise((resolve) => {
    ws.on('message', function on(m) {
      const reply = JSON.parse(m);
      if (reply.id === id) { ws.off('message', on); resolve(reply.result); }
    });
    ws.send(JSON.stringify(message));
  });
}

async function measure(name, url, text, id, prepare) {
  const ws = await connect(url);
  const sessionId = prepare ? await prepare(ws) : undefined;
  const body = typeof text === 'function' ? text(sessionId) : text;
  await sleep(1000);
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); // the peak starts from now
  const before = memory();
  const started = Date.now();
  const { outcome } = await answer(ws, body, id);
  const ms = Date.now() - started;
  await sleep(500);
  const after = memory();
  const growth = after.hwm - before.rss;
  ws.terminate();
  const result = {
    label, case: name, bytes: body.length, outcome, ms,
    rss_before_mb: +(before.rss / 2 ** 20).toFixed(1),
    peak_mb: +(after.hwm / 2 ** 20).toFixed(1),
    growth_mb: +(growth / 2 ** 20).toFixed(1),
    growth_per_byte: +(growth / body.length).toFixed(2),
  };
  console.log(JSON.stringify(result));
  await sleep(1000);
}

const created = await fetch(`http://${gate}/public/sessions`, {
  method: 'POST',
  headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
  body: JSON.stringify({ isolation: 'context' }),
}).then((r) => r.json());
const cdp = created.cdp_url;
const live = created.metadata.live_url_read_only.replace('http://', 'ws://').replace('?token=', '/cdp?token=');
const attach = async (ws) => {
  const { targetInfos } = await call(ws, 1, 'Target.getTargets');
  const page = targetInfos.find((t) => t.type === 'page').targetId;
  return (await call(ws, 2, 'Target.attachToTarget', { targetId: page, flatten: true })).sessionId;
};
// A page command carrying the list: the filter passes its parameters as written.
const pageCommand = (sessionId) => {
  const head = `{"id":3,"method":"Runtime.evaluate","sessionId":"${sessionId}","params":{"expression":"1","x":`;
  return head + zeros(max - head.length - 2) + '}}';
};

await measure('cdp_url [0,0,…] at the limit', cdp, zeros(max), null);
await measure('cdp_url page command with [0,0,…] at the limit', cdp, pageCommand, 3, attach);
await measure('live link [0,0,…] at the limit', live, zeros(max), null);
// A command a viewer may send, carrying the list: passed on as written.
const viewerCommand = '{"id":4,"method":"Page.enable","params":{"x":';
await measure('live link Page.enable with [0,0,…] at the limit', live,
  viewerCommand + zeros(max - viewerCommand.length - 2) + '}}', 4);
await measure('cdp_url [0,0,…] 64 MiB', cdp, zeros(64 * 2 ** 20), null);
await measure('live link [0,0,…] 64 MiB', live, zeros(64 * 2 ** 20), null);
process.exit(0);
