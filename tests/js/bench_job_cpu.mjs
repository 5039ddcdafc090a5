// CPU per job, read from cgroups by scripts/bench-job-cpu.sh: N jobs back to back, each
// a process session (create, Puppeteer connects, a local page, its title, a screenshot,
// disconnect, terminate), a create and terminate alone, or Puppeteer launching the shell.
import puppeteer from 'puppeteer-core';
const [mode, nArg, pageUrl] = process.argv.slice(2);
const n = Number(nArg);
const parts = mode.split('|');
async function job() {
  if (parts[0] === 'launch') {
    const browser = await puppeteer.launch({ executablePath: parts[1], headless: 'shell', args: ['--no-sandbox'] , defaultViewport: null});
    const page = (await browser.pages())[0];
    await page.goto(pageUrl, { waitUntil: 'load' });
    await page.title(); await page.screenshot();
    await browser.close();
    return;
  }
  const [, addr, key, body] = parts;
  const headers = { 'X-API-Key': key, 'content-type': 'application/json' };
  const s = await (await fetch(`http://${addr}/public/sessions`, { method: 'POST', headers, body })).json();
  if (parts[0] === 'gate') {
    const browser = await puppeteer.connect({ browserWSEndpoint: s.cdp_url, defaultViewport: null });
    const page = (await browser.pages())[0] ?? (await browser.newPage());
    await page.goto(pageUrl, { waitUntil: 'load' });
    await page.title(); await page.screenshot();
    await browser.disconnect();
  }
  await fetch(`http://${addr}/public/sessions/${s.session_id}/terminate`, { method: 'POST', headers });
}
for (let i = 0; i < n; i++) await job();
