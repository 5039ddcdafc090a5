// A dedicated worker's view of the machine, sent back to the page that asks; its fetch
// lets the test's server see the worker's request headers.
self.addEventListener('message', async () => {
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
  await fetch('/ping?from=worker');
  self.postMessage(r);
});
