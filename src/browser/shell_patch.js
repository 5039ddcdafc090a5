// What Chromium's headless shell lacks beside the full Chromium, put back in each frame's
// main world before the page runs: navigator.plugins and mimeTypes (Chrome's fixed PDF
// list), window.chrome, the notification permission a person's Chrome starts with. No
// global is left behind; the functions read as native ones.
(() => {
  if (typeof window === 'undefined' || window.chrome) return;
  const define = Object.defineProperty;
  const bind = Function.prototype.bind;
  const native = (f, name) => {
    const bound = bind.call(f, undefined);
    define(bound, 'name', { value: name });
    return bound;
  };
  const getter = (obj, key, value) => {
    const desc = Object.getOwnPropertyDescriptor(obj, key);
    define(obj, key, {
      get: native(() => value, `get ${key}`),
      set: desc && desc.set,
      enumerable: desc ? desc.enumerable : true,
      configurable: true,
    });
  };
  const hidden = (obj, key, value) => define(obj, key, { value, enumerable: false, configurable: true });
  const list = (proto, items, nameOf) => {
    const array = Object.create(proto);
    items.forEach((item, i) => define(array, i, { value: item, enumerable: true, configurable: true }));
    items.forEach((item) => hidden(array, nameOf(item), item));
    hidden(array, 'length', items.length);
    hidden(array, 'item', native((i) => items[i >>> 0] || null, 'item'));
    hidden(array, 'namedItem', native((n) => items.find((item) => nameOf(item) === n) || null, 'namedItem'));
    return array;
  };
  const pdf = 'Portable Document Format';
  const mimes = [
    ['application/pdf', 'pdf'],
    ['text/pdf', 'pdf'],
  ].map(([type, suffixes]) => {
    const m = Object.create(MimeType.prototype);
    hidden(m, 'type', type);
    hidden(m, 'suffixes', suffixes);
    hidden(m, 'description', pdf);
    return m;
  });
  const plugins = ['PDF Viewer', 'Chrome PDF Viewer', 'Chromium PDF Viewer', 'Microsoft Edge PDF Viewer', 'WebKit built-in PDF'].map(
    (name) => {
      const p = Object.create(Plugin.prototype);
      mimes.forEach((m, i) => define(p, i, { value: m, enumerable: true, configurable: true }));
      hidden(p, 'name', name);
      hidden(p, 'filename', 'internal-pdf-viewer');
      hidden(p, 'description', pdf);
      hidden(p, 'length', mimes.length);
      hidden(p, 'item', native((i) => mimes[i >>> 0] || null, 'item'));
      hidden(p, 'namedItem', native((t) => mimes.find((m) => m.type === t) || null, 'namedItem'));
      return p;
    },
  );
  mimes.forEach((m) => hidden(m, 'enabledPlugin', plugins[0]));
  const pluginArray = list(PluginArray.prototype, plugins, (p) => p.name);
  hidden(pluginArray, 'refresh', native(() => undefined, 'refresh'));
  getter(Navigator.prototype, 'plugins', pluginArray);
  getter(Navigator.prototype, 'mimeTypes', list(MimeTypeArray.prototype, mimes, (m) => m.type));
  getter(Navigator.prototype, 'pdfViewerEnabled', true);
  if (window.Notification && Notification.permission === 'denied') getter(Notification, 'permission', 'default');
  const started = Date.now() / 1000;
  const chrome = {
    app: {
      isInstalled: false,
      InstallState: { DISABLED: 'disabled', INSTALLED: 'installed', NOT_INSTALLED: 'not_installed' },
      RunningState: { CANNOT_RUN: 'cannot_run', READY_TO_RUN: 'ready_to_run', RUNNING: 'running' },
      getDetails: native(() => null, 'getDetails'),
      getIsInstalled: native(() => false, 'getIsInstalled'),
      installState: native(() => 'not_installed', 'installState'),
      runningState: native(() => 'cannot_run', 'runningState'),
    },
    csi: native(() => ({ startE: Math.round(started * 1000), onloadT: Date.now(), pageT: Date.now() - started * 1000, tran: 15 }), 'csi'),
    loadTimes: native(
      () => ({
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
      }),
      'loadTimes',
    ),
  };
  define(window, 'chrome', { value: chrome, writable: true, enumerable: true, configurable: false });
})();
