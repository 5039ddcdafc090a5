// The same Puppeteer job against cdpgate and browserless, side by side (run by
// scripts/bench-jobs.sh): get a browser (cdpgate: create a session; browserless: connect,
// which launches one), open a local page, read its title, take a screenshot, disconnect
// (cdpgate: end the session). cdpgate runs it on process sessions and on context sessions.
// N jobs at concurrency C per round; systems alternate round by round. Reports jobs/s, job latency and the machine's CPU-seconds per job (/proc/stat).
// usage: node bench_jobs.mjs <cdpgate_addr> <key> <browserless_ws> <page_url> <rounds> <jobs> <concurrency>
// (FULL_GATE=<addr> adds a broker whose process sessions run the full Chromium, SINGLE_GATE
// one whose shells run as one process, BROWSERLESS_SINGLE=1 browserless launching so;
// BASELINE_GATE=<addr> adds another broker's process and context sessions; CAPTURE=1 adds
// process and context sessions with console and network capture; SYSTEMS=… picks)
import { readFileSync } from 'fs';
import puppeteer from 'puppeteer-core';

const [gate, key, blWs, pageUrl, roundsArg, jobsArg, concArg] = process.argv.slice(2);
const [rounds, jobs, conc] = [Number(roundsArg), Number(jobsArg), Number(concArg)];
const headers = { 'X-API-Key': key, 'content-type': 'application/json' };

async function pageJob(browser) {
  const page = (await browser.pages())[0] ?? (await browser.newPage());
  await page.goto(pageUrl, { waitUntil: 'load' });
  const title = await page.title();
  await page.screenshot();
  if (!title) throw new Error('no title');
}

async function cdpgateJob(body, at = gate) {
  const s = await (await fetch(`http://${at}/public/sessions`, { method: 'POST', headers, body })).json();
  if (!s.cdp_url) throw new Error(JSON.stringify(s));
  const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
  await pageJob(browser);
  await browser.disconnect();
  await fetch(`http://${at}/public/sessions/${s.session_id}/terminate`, { method: 'POST', headers });
}

async function browserlessJob(ws) {
  const browser = await puppeteer.connect({ browserWSEndpoint: ws, defaultViewport: null });
  await pageJob(browser);
  await browser.close();
}

// browserless's endpoint with `args` added to its launch options (`launch` query, JSON).
function withLaunchArgs(ws, args) {
  const url = new URL(ws);
  const launch = JSON.parse(url.searchParams.get('launch') ?? '{}');
  url.searchParams.set('launch', JSON.stringify({ ...launch, args: [...(launch.args ?? []), ...args] }));
  return url.toString();
}

const baseline = process.env.BASELINE_GATE;
const fullGate = process.env.FULL_GATE;
const singleGate = process.env.SINGLE_GATE;
const allSystems = {
  cdpgate: () => cdpgateJob('{}'),
  ...(fullGate && { cdpgate_full: () => cdpgateJob('{}', fullGate) }),
  ...(singleGate && { cdpgate_single: () => cdpgateJob('{}', singleGate) }),
  cdpgate_context: () => cdpgateJob('{"isolation": "context"}'),
  browserless: () => browserlessJob(blWs),
  // BROWSERLESS_SINGLE=1: browserless launching its Chrome as one process too (the flags
  // of cdpgate's single_process_shell, passed as its launch arguments).
  ...(process.env.BROWSERLESS_SINGLE === '1' && {
    browserless_single: () => browserlessJob(withLaunchArgs(blWs, ['--single-process', '--no-zygote'])),
  }),
  // CAPTURE=1: the same jobs with the console and the network captured (capture_console,
  // capture_network: what the events, logs and HAR cost a job).
  ...(process.env.CAPTURE === '1' && {
    cdpgate_capture: () => cdpgateJob('{"capture_console": true, "capture_network": true}'),
    cdpgate_context_capture: () =>
      cdpgateJob('{"isolation": "context", "capture_console": true, "capture_network": true}'),
  }),
  ...(baseline && {
    baseline: () => cdpgateJob('{}', baseline),
    baseline_context: () => cdpgateJob('{"isolation": "context"}', baseline),
  }),
};
// SYSTEMS=a,b limits a run to some of them (browserless always runs: the ratios need it;
// so does browserless_single when asked for).
const only = process.env.SYSTEMS?.split(',');
const systems = Object.fromEntries(
  Object.entries(allSystems).filter(([name]) => !only || name.startsWith('browserless') || only.includes(name)),
);

function busySeconds() {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  const idle = cpu[3] + cpu[4];
  return (cpu.reduce((a, b) => a + b, 0) - idle) / 100;
}

const results = Object.fromEntries(Object.keys(systems).map((k) => [k, { rates: [], latencies: [], cpu: [] }]));
for (let r = 0; r < rounds; r++) {
  for (const [name, job] of Object.entries(systems)) {
    await new Promise((ok) => setTimeout(ok, 3000)); // warm pools refill; the machine settles
    let next = 0;
    const cpu0 = busySeconds();
    const started = performance.now();
    const worker = async () => {
      while (next < jobs) {
        next++;
        const t = performance.now();
        await job();
        results[name].latencies.push(performance.now() - t);
      }
    };
    await Promise.all(Array.from({ length: conc }, worker));
    const seconds = (performance.now() - started) / 1000;
    results[name].rates.push(jobs / seconds);
    results[name].cpu.push((busySeconds() - cpu0) / jobs);
  }
}
const q = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };
const out = {};
for (const [name, r] of Object.entries(results)) {
  out[name] = {
    jobs_per_s_median: +q(r.rates, 0.5).toFixed(2),
    jobs_per_s_range: [+Math.min(...r.rates).toFixed(2), +Math.max(...r.rates).toFixed(2)],
    latency_p50_s: +(q(r.latencies, 0.5) / 1000).toFixed(3),
    latency_p90_s: +(q(r.latencies, 0.9) / 1000).toFixed(3),
    latency_p99_s: +(q(r.latencies, 0.99) / 1000).toFixed(3),
    machine_cpu_s_per_job: +q(r.cpu, 0.5).toFixed(2),
  };
}
for (const name of Object.keys(systems).filter((n) => n !== 'browserless')) {
  out[`ratio_${name}_to_browserless`] = +(out[name].jobs_per_s_median / out.browserless.jobs_per_s_median).toFixed(2);
}
console.log(JSON.stringify(out));
