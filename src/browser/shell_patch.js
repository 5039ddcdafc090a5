// What Chromium's headless shell lacks beside the full Chromium, put back in each frame's
// main world before the page runs: navigator.plugins and mimeTypes (Chrome's fixed PDF
// list), pdfViewerEnabled, window.chrome, the notification permission a person's Chrome
// starts with. Each function and getter reads as the full Chromium's own (compared in
// tests/stealth.rs): the shell has the same interfaces (PluginArray, Plugin, MimeType …)
// with nothing in them, so their own methods and getters are wrapped: on the patch's
// objects they answer from its list, on any other object they are the shell's own (which
// throws as natively); what only the full Chromium has is made as it makes it. No global
// is left behind. A function expression, given `native` (native.js's).
((native) => {
  'use strict';
  if (typeof window === 'undefined' || window.chrome) return;
  const define = Object.defineProperty;
  const describe = Object.getOwnPropertyDescriptor;
  const reflect = Reflect.apply;
  const lookup = WeakMap.prototype.get;
  // The patch's plugins, mime types and their lists, each with what its getters answer
  // (`list`: its items, `nameOf`: an item's name for namedItem).
  const fields = new WeakMap();
  const fieldsOf = (o) => reflect(lookup, fields, [o]);
  const made = (proto, values) => {
    const o = Object.create(proto);
    fields.set(o, values);
    return o;
  };
  // Taken now: what runs while the page does calls nothing the page could replace.
  const now = Date.now;
  const round = Math.round;
  const typeError = TypeError;
  // Wraps `proto[key]` (its getter with `getter`): on the patch's objects it answers
  // `answer(fields, argument)`, on others it is the shell's own. The same name and length.
  const wrap = (proto, key, answer, getter) => {
    const desc = describe(proto, key);
    const original = getter ? desc.get : desc.value;
    const wanted = original.length;
    const missing = `Failed to execute '${key}' on '${proto[Symbol.toStringTag]}': ${wanted} argument required, but only 0 present.`;
    const call = (self, args) => {
      const own = fieldsOf(self);
      if (!own) return reflect(original, self, args);
      if (args.length < wanted) throw new typeError(missing);
      return answer(own, args[0]);
    };
    if (getter) {
      const fresh = describe({ get [key]() { return call(this, []); } }, key).get;
      define(proto, key, { ...desc, get: native(fresh, original) });
    } else {
      const fresh = wanted ? { [key](arg) { return call(this, arguments); } }[key] : { [key]() { return call(this, arguments); } }[key];
      define(proto, key, { ...desc, value: native(fresh, original) });
    }
  };
  const item = (own, index) => {
    const i = index >>> 0;
    return i < own.list.length ? own.list[i] : null;
  };
  const namedItem = (own, name) => {
    const wanted = `${name}`;
    for (let i = 0; i < own.list.length; i++) if (own.nameOf(own.list[i]) === wanted) return own.list[i];
    return null;
  };
  const length = (own) => own.list.length;
  const field = (key) => (own) => own[key];
  for (const proto of [PluginArray.prototype, MimeTypeArray.prototype, Plugin.prototype]) {
    wrap(proto, 'item', item);
    wrap(proto, 'namedItem', namedItem);
    wrap(proto, 'length', length, true);
  }
  wrap(PluginArray.prototype, 'refresh', () => undefined);
  for (const key of ['name', 'filename', 'description']) wrap(Plugin.prototype, key, field(key), true);
  for (const key of ['type', 'suffixes', 'description', 'enabledPlugin']) wrap(MimeType.prototype, key, field(key), true);
  // A list's items by index (enumerable) and by name (not), read-only, as on a legacy
  // platform object.
  const list = (o, items, nameOf) => {
    items.forEach((item, i) => define(o, i, { value: item, enumerable: true, configurable: true }));
    items.forEach((item) => define(o, nameOf(item), { value: item, enumerable: false, configurable: true }));
    return o;
  };
  const typeOf = (m) => fieldsOf(m).type;
  const pdf = 'Portable Document Format';
  // Each plugin answers mime types of its own; the mime type list's belong to the first.
  const mimesOf = (plugin) =>
    ['application/pdf', 'text/pdf'].map((type) =>
      made(MimeType.prototype, { __proto__: null, type, suffixes: 'pdf', description: pdf, enabledPlugin: plugin }),
    );
  const plugins = ['PDF Viewer', 'Chrome PDF Viewer', 'Chromium PDF Viewer', 'Microsoft Edge PDF Viewer', 'WebKit built-in PDF'].map(
    (name) => {
      const own = { __proto__: null, name, filename: 'internal-pdf-viewer', description: pdf, list: [], nameOf: typeOf };
      const plugin = made(Plugin.prototype, own);
      own.list = mimesOf(plugin);
      return list(plugin, own.list, typeOf);
    },
  );
  const mimes = mimesOf(plugins[0]);
  const pluginArray = made(PluginArray.prototype, { __proto__: null, list: plugins, nameOf: (p) => fieldsOf(p).name });
  const mimeTypeArray = made(MimeTypeArray.prototype, { __proto__: null, list: mimes, nameOf: typeOf });
  list(pluginArray, plugins, (p) => fieldsOf(p).name);
  list(mimeTypeArray, mimes, typeOf);
  // A getter answering `value` once the shell's own has checked the object it is called on.
  const getter = (obj, key, value) => {
    const desc = describe(obj, key);
    const original = desc.get;
    const fresh = describe({ get [key]() { reflect(original, this, []); return value; } }, key).get;
    define(obj, key, { ...desc, get: native(fresh, original) });
  };
  getter(Navigator.prototype, 'plugins', pluginArray);
  getter(Navigator.prototype, 'mimeTypes', mimeTypeArray);
  getter(Navigator.prototype, 'pdfViewerEnabled', true);
  if (window.Notification && Notification.permission === 'denied') getter(Notification, 'permission', 'default');
  // window.chrome as the full Chromium has it on a web page (no chrome.runtime there):
  // loadTimes and csi are plain anonymous functions (a prototype, callable with new),
  // chrome.app's are methods.
  const started = now() / 1000;
  const loadTimes = native(function () {
    return {
      requestTime: started,
      startLoadTime: started,
      commitLoadTime: started,
      finishDocumentLoadTime: 0,
      finishLoadTime: 0,
      firstPaintTime: 0,
      firstPaintAfterLoadTime: 0,
      navigationType: 'Other',
      wasFetchedViaSpdy: false,
      wasNpnNegotiated: false,
      npnNegotiatedProtocol: 'unknown',
      wasAlternateProtocolAvailable: false,
      connectionInfo: 'http/1.1',
    };
  });
  const csi = native(function () {
    return { startE: round(started * 1000), onloadT: now(), pageT: now() - started * 1000, tran: 15 };
  });
  const app = {
    isInstalled: false,
    getDetails() {
      return null;
    },
    getIsInstalled() {
      return false;
    },
    installState() {},
    runningState() {
      return 'cannot_run';
    },
    InstallState: { DISABLED: 'disabled', INSTALLED: 'installed', NOT_INSTALLED: 'not_installed' },
    RunningState: { CANNOT_RUN: 'cannot_run', READY_TO_RUN: 'ready_to_run', RUNNING: 'running' },
  };
  for (const key of ['getDetails', 'getIsInstalled', 'installState', 'runningState']) native(app[key]);
  define(window, 'chrome', { value: { loadTimes, csi, app }, writable: true, enumerable: true, configurable: true });
})
