// How the functions the broker's patches put in a page or worker read as native ones:
// Function.prototype.toString answers for each as for the original it stands for (and for
// itself as for the native toString). An expression: it patches toString once and gives
// `native(fresh, original)`, which registers `fresh` and answers it; without an original
// (what only the full Chromium has natively), `fresh` reads as a native function of its
// own name (`function item() { [native code] }`). What it calls later is
// taken now, before the page runs, so a page that replaces WeakMap or Reflect methods
// neither breaks nor sees it.
(() => {
  const sources = new WeakMap();
  const get = WeakMap.prototype.get;
  const set = WeakMap.prototype.set;
  const reflect = Reflect.apply;
  const toString = Function.prototype.toString;
  const patchedToString = {
    toString() {
      const source = reflect(get, sources, [this]);
      return typeof source === 'string' ? source : reflect(toString, source || this, []);
    },
  }.toString;
  const native = (fresh, original) => {
    reflect(set, sources, [fresh, original || `function ${fresh.name}() { [native code] }`]);
    return fresh;
  };
  native(patchedToString, toString);
  const describe = Object.getOwnPropertyDescriptor;
  Object.defineProperty(Function.prototype, 'toString', { ...describe(Function.prototype, 'toString'), value: patchedToString });
  return native;
})()
