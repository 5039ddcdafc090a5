// What a session's fingerprint sets that no DevTools override reaches, put into each
// frame before its page runs and into each worker before its script does: deviceMemory,
// the WebGL vendor and renderer a person's GPU reports (main world and OffscreenCanvas in
// workers), navigator.platform in workers (and in pages, where a client attaching later
// would reset the override), navigator.vendor and userAgentData for an iOS device,
// hardwareConcurrency in workers, and navigator.userAgent in a service worker (it keeps
// the launch flag's, which no override reaches). No global is left behind; patched
// functions read as native ones (`native`, native.js's). A function expression, given
// `native` and what to set.
((native, config) => {
  const nav = typeof Navigator !== 'undefined' ? Navigator : typeof WorkerNavigator !== 'undefined' ? WorkerNavigator : null;
  if (!nav) return;
  const define = Object.defineProperty;
  const describe = Object.getOwnPropertyDescriptor;
  const reflect = Reflect.apply;
  // A getter on `proto` reading `value`, standing for the original one.
  const getter = (proto, key, value) => {
    const desc = describe(proto, key);
    if (!desc || !desc.get) return;
    const get = { get [key]() { return value; } };
    define(proto, key, { ...desc, get: native(describe(get, key).get, desc.get) });
  };
  const p = nav.prototype;
  if (config.platform) getter(p, 'platform', config.platform);
  if (config.userAgent) {
    getter(p, 'userAgent', config.userAgent);
    getter(p, 'appVersion', config.userAgent.replace(/^Mozilla\//, ''));
  }
  if (config.vendor) getter(p, 'vendor', config.vendor);
  if (config.worker && config.hardwareConcurrency) getter(p, 'hardwareConcurrency', config.hardwareConcurrency);
  if (config.deviceMemory) getter(p, 'deviceMemory', config.deviceMemory);
  else if (config.deviceMemory === null) delete p.deviceMemory;
  if (config.noClientHints) delete p.userAgentData;
  // A cross-site frame renders in a process of its own, which the page's screen emulation
  // does not reach: its screen and pixel ratio are set here.
  if (config.screen && typeof Screen !== 'undefined') {
    const [width, height] = config.screen;
    for (const [key, value] of [['width', width], ['height', height], ['availWidth', width], ['availHeight', height]]) {
      getter(Screen.prototype, key, value);
    }
    const dpr = describe(globalThis, 'devicePixelRatio');
    if (dpr && dpr.get) {
      const fresh = describe({ get devicePixelRatio() { return config.dpr; } }, 'devicePixelRatio').get;
      define(globalThis, 'devicePixelRatio', { ...dpr, get: native(fresh, dpr.get) });
    }
  }
  const UNMASKED_VENDOR = 0x9245;
  const UNMASKED_RENDERER = 0x9246;
  for (const name of ['WebGLRenderingContext', 'WebGL2RenderingContext']) {
    const ctx = globalThis[name];
    if (!ctx) continue;
    const original = ctx.prototype.getParameter;
    const patched = {
      getParameter(parameter) {
        const value = reflect(original, this, arguments);
        if (parameter === UNMASKED_VENDOR && typeof value === 'string') return config.webglVendor;
        if (parameter === UNMASKED_RENDERER && typeof value === 'string') return config.webglRenderer;
        return value;
      },
    }.getParameter;
    define(ctx.prototype, 'getParameter', { ...describe(ctx.prototype, 'getParameter'), value: native(patched, original) });
  }
})
