// Opens a session's live view in a real headless Chromium (Playwright) while Puppeteer
// drives the same session as the automation would, and reports what happened as JSON.
// usage: node live_view.mjs <cdp_url> <live_url> <live_url_read_only> <site> <api> <key> <session_id>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [cdpUrl, liveUrl, readOnlyUrl, site, api, key, sessionId] = process.argv.slice(2);
const result = {};
const flags = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const automation = await puppeteer.connect({ browserWSEndpoint: cdpUrl, defaultViewport: null });
const [page] = await automation.pages();
await page.goto(site + '/first');

const viewer = await chromium.launch({ executablePath: '/usr/bin/chromium', args: flags });
const context = await viewer.newContext({ viewport: { width: 1000, height: 700 } });
const view = await context.newPage();
let started = Date.now();
await view.goto(liveUrl);
await view.waitForFunction(() => window.__live.frames > 0, null, { timeout: 30000 });
result.firstFrameMs = Date.now() - started;

// The automation goes elsewhere; the view follows.
const before = await view.evaluate(() => window.__live.lastFrame);
await page.goto(site + '/form');
await view.waitForFunction((prev) => window.__live.lastFrame !== prev, before, { timeout: 5000 });
result.followedNavigation = true;

// Frame rate while the page animates.
await page.evaluate(() => { let n = 0; window.__anim = setInterval(() => { document.body.style.background = `hsl(${n++ * 7 % 360},60%,60%)`; }, 16); });
const f0 = await view.evaluate(() => window.__live.frames);
await new Promise((r) => setTimeout(r, 2000));
result.framesPerSecond = ((await view.evaluate(() => window.__live.frames)) - f0) / 2;
await page.evaluate(() => { clearInterval(window.__anim); document.body.style.background = ''; });
await new Promise((r) => setTimeout(r, 300));

// A click in the view lands on the button in the session's page.
async function viewPoint(selector) {
  const box = await (await page.$(selector)).boundingBox();
  const img = await (await view.$('#screen')).boundingBox();
  const device = await view.evaluate(() => window.__live.device);
  return { x: img.x + (box.x + box.width / 2) * img.width / device.width,
           y: img.y + (box.y + box.height / 2) * img.height / device.height };
}
const button = await viewPoint('#press');
const framesBeforeClick = await view.evaluate(() => window.__live.frames);
started = Date.now();
await view.mouse.click(button.x, button.y);
await page.waitForFunction(() => window.clicks === 1, { timeout: 5000 });
await view.waitForFunction((n) => window.__live.frames > n, framesBeforeClick, { timeout: 5000 });
result.inputToFrameMs = Date.now() - started;
result.clicks = await page.evaluate(() => window.clicks);

// Typing in the view lands in the focused input, keys included.
const field = await viewPoint('#name');
await view.mouse.click(field.x, field.y);
await view.keyboard.type('alicex');
await view.keyboard.press('Backspace');
await view.keyboard.press('Enter');
await page.waitForFunction(() => window.submitted !== undefined, { timeout: 5000 });
result.typed = await page.evaluate(() => window.submitted);

// A tab the automation opens is followed; the viewer can switch back.
const watched = await view.evaluate(() => window.__live.target);
const second = await automation.newPage();
await second.goto(site + '/first');
await view.waitForFunction((t) => window.__live.target !== t, watched, { timeout: 5000 });
result.followedNewTab = true;
result.tabButtons = await view.locator('#tabs button').count();
await view.locator('#tabs button', { hasText: 'form' }).click();
await view.waitForFunction((t) => window.__live.target === t, watched, { timeout: 5000 });
result.switchedBack = true;
await second.close();

// The read-only link shows but forwards nothing.
const ro = await context.newPage();
await ro.goto(readOnlyUrl);
await ro.waitForFunction(() => window.__live.frames > 0, null, { timeout: 5000 });
const roImg = await (await ro.$('#screen')).boundingBox();
const device = await ro.evaluate(() => window.__live.device);
const box = await (await page.$('#press')).boundingBox();
await ro.mouse.click(roImg.x + (box.x + box.width / 2) * roImg.width / device.width,
                     roImg.y + (box.y + box.height / 2) * roImg.height / device.height);
await ro.keyboard.type('zzz');
await new Promise((r) => setTimeout(r, 500));
result.clicksAfterReadOnly = await page.evaluate(() => window.clicks);
result.readOnlyMode = await ro.evaluate(() => document.getElementById('mode').textContent);

// The session ends: both pages say so.
await automation.disconnect();
await fetch(`${api}/public/sessions/${sessionId}/terminate`, { method: 'POST', headers: { 'X-API-Key': key } });
await view.waitForFunction(() => window.__live.ended !== null, null, { timeout: 5000 });
result.endedMessage = await view.evaluate(() => document.getElementById('notice').textContent);
result.endedShown = await view.isVisible('#notice');
await viewer.close();
console.log(JSON.stringify(result));
