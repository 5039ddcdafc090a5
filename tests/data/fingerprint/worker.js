// A dedicated or service worker's view of the machine, sent back to the page that asks;
// its fetch lets the test's server see the worker's request headers.
const kind = new URL(location.href).searchParams.get('kind') || 'dedicated';
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('message', (e) => {
  const reply = e.source && e.source.postMessage ? (r) => e.source.postMessage(r) : (r) => self.postMessage(r);
  const work = surfaces().then(reply);
  if (e.waitUntil) e.waitUntil(work);
});

async function surfaces() {
  const uad = navigator.userAgentData;
  const r = {
    userAgent: navigator.userAgent,
    platform: navigator.platform,
    hardwareConcurrency: navigator.hardwareConcurrency,
    deviceMemory: navigator.deviceMemory === undefined ? null : navigator.deviceMemory,
    languages: navigator.languages,
    hasUserAgentData: uad !== undefined,
  };
  if (uad) {
    r.brands = uad.brands.map((b) => `${b.brand}/${b.version}`);
    r.uaPlatform = uad.platform;
    r.mobile = uad.mobile;
    r.high = { platformVersion: (await uad.getHighEntropyValues(['platformVersion'])).platformVersion };
  }
  try {
    const gl = new OffscreenCanvas(1, 1).getContext('webgl');
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    r.webgl = [gl.getParameter(info.UNMASKED_VENDOR_WEBGL), gl.getParameter(info.UNMASKED_RENDERER_WEBGL)];
  } catch (e) {
    r.webgl = String(e);
  }
  // fpscanner's hasCDP: a client's Runtime.enable shows if logging an Error runs
  // Error.prepareStackTrace.
  r.prepareStackTraceRan = (() => {
    let ran = false;
    const saved = Error.prepareStackTrace;
    Error.prepareStackTrace = function () { ran = true; return saved; };
    console.log(new Error(''));
    Error.prepareStackTrace = saved;
    return ran;
  })();
  await fetch(`/ping?from=${kind}`);
  return r;
}
