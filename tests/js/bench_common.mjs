// Shared by the bench scripts' clients: one session created and timed to its first CDP
// reply (create -> WebSocket to cdp_url -> answer to Browser.getVersion), then ended.
// Needs Node's WebSocket (node --experimental-websocket on Node 20).
export async function createToFirstReply(api, key, body = {}) {
  const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
  const started = performance.now();
  const created = await (await fetch(`${api}/public/sessions`, { method: 'POST', headers, body: JSON.stringify(body) })).json();
  if (!created.cdp_url) throw new Error(JSON.stringify(created));
  const ws = new WebSocket(created.cdp_url);
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = fail; });
  ws.send(JSON.stringify({ id: 1, method: 'Browser.getVersion', params: {} }));
  await new Promise((ok) => { ws.onmessage = ok; });
  const took = performance.now() - started;
  ws.close();
  await fetch(`${api}/public/sessions/${created.session_id}/terminate`, { method: 'POST', headers });
  return took;
}
