import puppeteer from 'puppeteer-core';
import { readFileSync } from 'fs';
const busy = () => { const c = readFileSync('/proc/stat','utf8').split('\n')[0].split(/\s+/).slice(1).map(Number); return (c.reduce((a,b)=>a+b,0)-c[3]-c[4])/100; };
const pidCpu = (pid) => { const f = readFileSync(`/proc/${pid}/stat`,'utf8').split(') ')[1].split(' '); return (Number(f[11])+Number(f[12]))/100; };
const bpid = process.env.BROKER_PID; const rest = Number(process.env.REST ?? 300);
const m0 = busy(), n0 = process.cpuUsage(), b0 = bpid ? pidCpu(bpid) : 0; const w0 = performance.now();
const [gate, key, pageUrl, n, body] = process.argv.slice(2);
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
const steps = {};
const mark = (k, t) => (steps[k] ??= []).push(performance.now() - t);
for (let i = 0; i < Number(n); i++) {
  await new Promise((ok) => setTimeout(ok, rest));
  const mode = process.env.MODE ?? 'full';
  const t0 = performance.now();
  if (mode === 'idle') { mark('job', t0); continue; }
  let t = performance.now();
  const s = await (await fetch(`http://${gate}/public/sessions`, { method: 'POST', headers, body })).json();
  mark('create', t); t = performance.now();
  if (mode === 'create') { await fetch(`http://${gate}/public/sessions/${s.session_id}/terminate`, { method: 'POST', headers }); mark('job', t0); continue; }
  const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
  mark('connect', t); t = performance.now();
  const page = (await browser.pages())[0] ?? (await browser.newPage());
  mark('pages', t); t = performance.now();
  if (mode === 'connect') { await browser.disconnect(); await fetch(`http://${gate}/public/sessions/${s.session_id}/terminate`, { method: 'POST', headers }); mark('job', t0); continue; }
  await page.goto(pageUrl, { waitUntil: 'load' });
  mark('goto', t); t = performance.now();
  await page.title();
  mark('title', t); t = performance.now();
  await page.screenshot();
  mark('screenshot', t); t = performance.now();
  await browser.disconnect();
  mark('disconnect', t); t = performance.now();
  await fetch(`http://${gate}/public/sessions/${s.session_id}/terminate`, { method: 'POST', headers });
  mark('terminate', t);
  mark('job', t0);
}
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length * p)]; };
for (const [k, v] of Object.entries(steps)) console.log(k.padEnd(12), 'p50', q(v, 0.5).toFixed(1), 'p90', q(v, 0.9).toFixed(1));
const m = busy() - m0, nd = (process.cpuUsage().user + process.cpuUsage().system - n0.user - n0.system) / 1e6, b = bpid ? pidCpu(bpid) - b0 : 0;
console.log(`wall ${((performance.now()-w0)/1000).toFixed(2)} s, jobs/s ${(Number(n)/((performance.now()-w0)/1000)).toFixed(2)}; per job CPU-s: machine ${(m/n).toFixed(3)} node ${(nd/n).toFixed(3)} broker ${(b/n).toFixed(3)} rest(chrome) ${((m-nd-b)/n).toFixed(3)}`);
