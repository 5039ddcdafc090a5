// Probes, from a page's main world, every function and getter the headless shell's patch
// stands in for (shell_patch.js): how each reads to a detector (its source text, name,
// length, own keys, whether `new` works, its property's descriptor and owner). Prints it
// as JSON, to be compared with a full Chromium's answer.
// usage: node shell_natives.mjs <endpoint> <page_url>
import puppeteer from 'puppeteer-core';

const [endpoint, url] = process.argv.slice(2);

// Runs in the page (Puppeteer's evaluate: no global left behind).
function probe() {
  const describe = Object.getOwnPropertyDescriptor;
  const kind = (v) => (v === null ? 'null' : typeof v);
  // A descriptor's shape: its flags as they are, its values by type.
  const shape = (d) =>
    d && Object.fromEntries(Object.entries(d).map(([k, v]) => [k, typeof v === 'boolean' ? v : kind(v)]));
  const thrown = (run) => {
    try {
      run();
      return 'no error';
    } catch (e) {
      return `${e && e.constructor && e.constructor.name}: ${e && e.message}`;
    }
  };
  const text = (f) => thrown(() => Function.prototype.toString.call(f)) === 'no error' ? Function.prototype.toString.call(f) : 'throws';
  const fn = (f) =>
    typeof f !== 'function'
      ? kind(f)
      : {
          toString: text(f),
          name: f.name,
          length: f.length,
          hasPrototype: 'prototype' in f,
          ownKeys: Reflect.ownKeys(f).map(String),
          nameDescriptor: shape(describe(f, 'name')),
          lengthDescriptor: shape(describe(f, 'length')),
          functionPrototype: Object.getPrototypeOf(f) === Function.prototype,
          newThrows: thrown(() => new f()).split(':')[0],
          onAnotherObject: thrown(() => f.call({})),
        };
  // Where `key` is found from `obj` up its prototype chain, and its descriptor there.
  const owner = (o) =>
    Object.prototype.hasOwnProperty.call(o, 'constructor') && typeof o.constructor === 'function'
      ? `${o.constructor.name}.prototype`
      : 'the object';
  const property = (obj, key) => {
    if (!obj) return 'no object';
    for (let o = obj, depth = 0; o; o = Object.getPrototypeOf(o), depth++) {
      const d = describe(o, key);
      if (d) {
        return {
          owner: o === obj ? 'the object' : owner(o),
          descriptor: shape(d),
          value: 'value' in d ? fn(d.value) : undefined,
          get: d.get ? fn(d.get) : undefined,
          set: d.set ? fn(d.set) : undefined,
        };
      }
    }
    return 'missing';
  };
  const r = {};
  for (const key of ['plugins', 'mimeTypes', 'pdfViewerEnabled']) r[`navigator.${key}`] = property(navigator, key);
  r['Notification.permission'] = property(Notification, 'permission');
  const plugins = navigator.plugins;
  const mimeTypes = navigator.mimeTypes;
  for (const key of ['item', 'namedItem', 'refresh', 'length']) r[`navigator.plugins.${key}`] = property(plugins, key);
  for (const key of ['item', 'namedItem', 'length']) r[`navigator.mimeTypes.${key}`] = property(mimeTypes, key);
  for (const key of ['item', 'namedItem', 'length', 'name', 'filename', 'description'])
    r[`navigator.plugins[0].${key}`] = property(plugins[0], key);
  for (const key of ['type', 'suffixes', 'description', 'enabledPlugin'])
    r[`navigator.mimeTypes[0].${key}`] = property(mimeTypes[0], key);
  // window.chrome's functions, wherever they are in it.
  const chromeFunctions = {};
  const walk = (obj, path, depth) => {
    if (!obj || depth > 2) return;
    for (const key of Reflect.ownKeys(obj)) {
      const d = describe(obj, key);
      const at = `${path}.${String(key)}`;
      if (typeof d.value === 'function') chromeFunctions[at] = property(obj, key);
      else if (d.value && typeof d.value === 'object') walk(d.value, at, depth + 1);
    }
  };
  walk(window.chrome, 'chrome', 0);
  r.chrome = chromeFunctions;
  // window.chrome's own keys and their descriptors, in order.
  const keys = (o) => o && Reflect.ownKeys(o).map((k) => [String(k), shape(describe(o, k))]);
  r['window.chrome'] = shape(describe(window, 'chrome'));
  r['chrome keys'] = keys(window.chrome);
  r['chrome.app keys'] = keys(window.chrome && window.chrome.app);
  r['chrome.app values'] = window.chrome && [chrome.app.isInstalled, chrome.app.getDetails(), chrome.app.getIsInstalled(), chrome.app.installState(), chrome.app.runningState(), chrome.app.InstallState, chrome.app.RunningState];
  r['chrome.loadTimes() keys'] = window.chrome && Object.keys(chrome.loadTimes());
  r['chrome.csi() keys'] = window.chrome && Object.keys(chrome.csi());
  // The lists' own properties (indices, then names), and which objects are the same.
  for (const [what, o] of [['navigator.plugins', plugins], ['navigator.mimeTypes', mimeTypes], ['navigator.plugins[0]', plugins[0]], ['navigator.mimeTypes[0]', mimeTypes[0]]])
    r[`${what} own`] = keys(o);
  r.identities = plugins.length && [
    navigator.plugins === navigator.plugins,
    plugins[0] === plugins.item(0),
    plugins[0] === plugins.namedItem('PDF Viewer'),
    plugins[0][0] === mimeTypes[0],
    plugins[0][0] === plugins[1][0],
    mimeTypes[0].enabledPlugin === plugins[0],
    plugins[1][0].enabledPlugin === plugins[1],
    plugins[0].length,
    plugins[0].name,
    mimeTypes[0].type,
    plugins.item(9) === null,
    plugins.item(-1) === null,
    plugins.namedItem('nothing') === null,
    thrown(() => plugins.item()),
    thrown(() => plugins[0].namedItem()),
    Object.prototype.toString.call(plugins),
    Object.prototype.toString.call(mimeTypes[0]),
  ];
  // Nothing left behind: the same globals, and symbols on what the patch touches.
  r.globals = Object.getOwnPropertyNames(window).filter((k) => k !== 'chrome').length;
  r.symbols = [window, navigator, Navigator.prototype, Notification, PluginArray.prototype, MimeTypeArray.prototype, Plugin.prototype, MimeType.prototype, Function.prototype, plugins, mimeTypes, plugins[0], mimeTypes[0]]
    .map((o) => o && Object.getOwnPropertySymbols(o).map(String));
  r['Function.prototype.toString'] = property(Function.prototype, 'toString');
  return r;
}

const browser = await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
const page = (await browser.pages())[0] || (await browser.newPage());
await page.goto(url);
const result = await page.evaluate(probe);
await browser.disconnect();
console.log(JSON.stringify(result));
