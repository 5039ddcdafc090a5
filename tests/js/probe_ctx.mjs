import puppeteer from 'puppeteer-core';
import { readFileSync } from 'fs';
const busy = () => { const c = readFileSync('/proc/stat','utf8').split('\n')[0].split(/\s+/).slice(1).map(Number); return (c.reduce((a,b)=>a+b,0)-c[3]-c[4])/100; };
const pidCpu = (pid) => { const f = readFileSync(`/proc/${pid}/stat`,'utf8').split(') ')[1].split(' '); return (Number(f[11])+Number(f[12]))/100; };
const [url, extra] = process.argv.slice(2);
const args = ['--headless','--disable-gpu','--disable-quic','--no-first-run','--no-default-browser-check','--disable-background-networking','--disable-component-update','--disable-sync','--disable-dev-shm-usage','--mute-audio','--password-store=basic','--test-type','--no-sandbox','--window-size=1280,807','--screen-info={1280x720}', 'about:blank', ...(extra ? extra.split(' ') : ['--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup'])];
const browser = await puppeteer.launch({ executablePath: process.env.CHROME ?? '/usr/bin/chromium', args, headless: (process.env.CHROME ?? '').includes('shell') ? 'shell' : true, ignoreDefaultArgs: true, defaultViewport: null, pipe: false });
const pid = browser.process().pid;
const cdp = await browser.target().createCDPSession();
await new Promise((ok) => setTimeout(ok, 3000));
const N = 20;
async function measure(name, op) {
  const m0 = busy(), b0 = pidCpu(pid), n0 = process.cpuUsage(); const t0 = performance.now();
  for (let i = 0; i < N; i++) await op();
  await new Promise((ok) => setTimeout(ok, 1000));
  const n1 = process.cpuUsage(); const nd = (n1.user + n1.system - n0.user - n0.system) / 1e6;
  console.log(`${name.padEnd(34)} wall/op ${((performance.now() - t0 - 1000) / N).toFixed(1)} ms; CPU-s/op browser ${((pidCpu(pid) - b0) / N).toFixed(3)}, chrome all ${((busy() - m0 - nd) / N).toFixed(3)}`);
}


const wsUrl = browser.wsEndpoint();
await measure('ctx + tab + goto + shot + dispose', async () => {
  const { browserContextId } = await cdp.send('Target.createBrowserContext', { disposeOnDetach: true });
  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank', browserContextId, width: 1280, height: 807 });
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
  const ps = cdp.connection().session(sessionId);
  await ps.send('Page.enable');
  const loaded = new Promise((ok) => ps.once('Page.loadEventFired', ok));
  await ps.send('Page.navigate', { url });
  await loaded;
  await ps.send('Page.captureScreenshot');
  await cdp.send('Target.disposeBrowserContext', { browserContextId });
});
await browser.close();
