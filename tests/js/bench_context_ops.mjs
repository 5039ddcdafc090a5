// What one context costs Chrome, by executable and flags (run by scripts/bench-context-ops.sh):
// Chromium launched with the broker's flags, then N times each operation on the browser's
// own CDP connection, timed, with the CPU of the browser process and of the whole machine
// less this script's own (so: the browser's renderers, GPU and utility processes too).
// usage: node bench_context_ops.mjs <executable> <page_url> <n> [flags...]
import puppeteer from 'puppeteer-core';
import { readFileSync } from 'fs';

const [executable, url, n, ...extra] = process.argv.slice(2);
const rounds = Number(n);
const busySeconds = () => {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  return (cpu.reduce((a, b) => a + b, 0) - cpu[3] - cpu[4]) / 100;
};
const processSeconds = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
const shell = executable.includes('headless-shell');
const args = [
  '--headless', '--disable-gpu', '--disable-quic', '--no-first-run', '--no-default-browser-check',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage', '--mute-audio', '--password-store=basic', '--test-type',
  ...(process.getuid() === 0 ? ['--no-sandbox'] : []),
  '--window-size=1280,807', '--screen-info={1280x720}', ...extra, 'about:blank',
];
const browser = await puppeteer.launch({
  executablePath: executable, args, headless: shell ? 'shell' : true, ignoreDefaultArgs: true, defaultViewport: null,
});
const pid = browser.process().pid;
const cdp = await browser.target().createCDPSession();
await new Promise((ok) => setTimeout(ok, 3000)); // what a launch does after it is ready

const out = {};
async function measure(name, op) {
  const [machine0, browser0, self0, t0] = [busySeconds(), processSeconds(pid), process.cpuUsage(), performance.now()];
  for (let i = 0; i < rounds; i++) await op();
  const wall = performance.now() - t0;
  await new Promise((ok) => setTimeout(ok, 1000)); // renderers exiting, disposal finishing
  const self = process.cpuUsage(self0);
  const others = busySeconds() - machine0 - (self.user + self.system) / 1e6;
  out[name] = {
    wall_ms: +(wall / rounds).toFixed(1),
    browser_process_cpu_s: +((processSeconds(pid) - browser0) / rounds).toFixed(3),
    chrome_cpu_s: +(others / rounds).toFixed(3),
  };
}

async function page(browserContextId) {
  // A size is for a new window: a new context's first tab.
  const size = browserContextId ? { width: 1280, height: 807 } : {};
  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank', browserContextId, ...size });
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
  const tab = cdp.connection().session(sessionId);
  await tab.send('Page.enable');
  return tab;
}
async function visit(tab) {
  const loaded = new Promise((ok) => tab.once('Page.loadEventFired', ok));
  await tab.send('Page.navigate', { url: `${url}?${Math.random()}` });
  await loaded;
}

await measure('context, tab, dispose', async () => {
  const { browserContextId } = await cdp.send('Target.createBrowserContext', { disposeOnDetach: true });
  await cdp.send('Target.createTarget', { url: 'about:blank', browserContextId, width: 1280, height: 807 });
  await cdp.send('Target.disposeBrowserContext', { browserContextId });
});
await measure('context, tab, page, screenshot, dispose', async () => {
  const { browserContextId } = await cdp.send('Target.createBrowserContext', { disposeOnDetach: true });
  const tab = await page(browserContextId);
  await visit(tab);
  await tab.send('Page.captureScreenshot');
  await cdp.send('Target.disposeBrowserContext', { browserContextId });
});
const tab = await page(undefined);
await measure('page in the same tab', () => visit(tab));
await measure('screenshot', () => tab.send('Page.captureScreenshot'));
await browser.close();
console.log(JSON.stringify(out));
