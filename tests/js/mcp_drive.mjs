// Drives cdpgate's MCP server with the official TypeScript SDK over Streamable HTTP: lists
// the tools, logs in on a local site by snapshot references, reads the result as
// markdown, checks that a second key sees nothing, and ends the session.
//
// usage: node mcp_drive.mjs MCP_URL KEY_A KEY_B SITE_URL   (prints one JSON report line)
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [mcpUrl, keyA, keyB, site] = process.argv.slice(2);

async function connect(key) {
  const client = new Client({ name: 'cdpgate-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
  });
  await client.connect(transport);
  return { client, transport };
}

const textOf = (r) => r.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
const refOf = (snapshot, pattern) => {
  const m = new RegExp(pattern + '.*?\\[ref=(e\\d+)\\]').exec(snapshot);
  if (!m) throw new Error(`${pattern} not in snapshot:\n${snapshot}`);
  return m[1];
};
const call = async (client, name, args) => {
  const r = await client.callTool({ name, arguments: args });
  if (r.isError) throw new Error(`${name}: ${textOf(r)}`);
  return r;
};

const report = {};
const a = await connect(keyA);
report.protocol = a.transport.protocolVersion;
report.tools = (await a.client.listTools()).tools.map((t) => t.name).sort();
const created = JSON.parse(textOf(await call(a.client, 'create_session', { isolation: 'context' })));
const sid = created.session_id;
await call(a.client, 'navigate', { session_id: sid, url: `${site}/login` });
const snap = textOf(await call(a.client, 'snapshot', { session_id: sid }));
await call(a.client, 'type', { session_id: sid, ref: refOf(snap, 'textbox "Username"'), text: 'alice' });
// Enter in the password field submits the form, as a person would.
await call(a.client, 'type', { session_id: sid, ref: refOf(snap, 'textbox "Password"'), text: 's3cret', submit: true });
report.markdown = textOf(await call(a.client, 'markdown', { session_id: sid }));

const b = await connect(keyB);
report.b_lists = JSON.parse(textOf(await call(b.client, 'list_sessions', { status: 'all' }))).sessions;
const bEnd = await b.client.callTool({ name: 'end_session', arguments: { session_id: sid } });
report.b_end = [bEnd.isError, textOf(bEnd)];
await b.transport.terminateSession();
await b.client.close();

report.ended = textOf(await call(a.client, 'end_session', { session_id: sid }));
report.active_after = JSON.parse(textOf(await call(a.client, 'list_sessions', {}))).sessions.length;
await a.transport.terminateSession();
await a.client.close();
console.log(JSON.stringify(report));
