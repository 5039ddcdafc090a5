// A dedicated or service worker's view of the browser, sent back to whoever asks; its
// fetch lets the test's server see the worker's request headers.
const TELLS = /cdc_|puppeteer|playwright|webdriver|domAutomation|cdpgate/i;
const brandList = (list) => (list || []).map((b) => `${b.brand}/${b.version}`);
const kind = new URL(location.href).searchParams.get('kind');

async function surfaces() {
  const r = { userAgent: navigator.userAgent, appVersion: navigator.appVersion, webdriver: navigator.webdriver };
  const uad = navigator.userAgentData;
  r.brands = uad ? brandList(uad.brands) : null;
  try {
    r.fullVersionList = brandList((await uad.getHighEntropyValues(['fullVersionList'])).fullVersionList);
  } catch (e) {
    r.fullVersionList = String(e);
  }
  r.globals = Object.getOwnPropertyNames(self).filter((k) => TELLS.test(k));
  await fetch(`/ping?from=${kind}`);
  return r;
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('message', (e) => {
  const reply = e.source && e.source.postMessage ? (r) => e.source.postMessage(r) : (r) => self.postMessage(r);
  const work = surfaces().then(reply);
  if (e.waitUntil) e.waitUntil(work);
});
