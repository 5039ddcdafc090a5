// Keeps a DevTools client's `Runtime.enable` out of the page's sight. With Runtime
// enabled, V8's inspector describes every console argument at the call, and describing an
// Error formats its stack, which calls the page's `Error.prepareStackTrace` (fpscanner's
// hasCDP) or a getter planted on it. The console methods that describe arguments hide it
// for the length of the native call (an own data property `undefined`, which also shadows
// a getter on Error's prototypes) and put the exact descriptor back after. The wrappers
// read as the native methods (`native`), keep their property descriptors, and call
// nothing the page can replace. A function expression: `native` is native.js's.
// The wrapper's two calls of the native method (the `reflect` of `original`) are the
// top frame of every console message's stack trace: console_patch.rs finds them in the
// page script by that text and the broker drops that frame from what clients see.
((native) => {
  const target = globalThis.console;
  if (!target) return;
  const errors = Error;
  const KEY = 'prepareStackTrace';
  // Descriptors without a prototype: what the page puts on Object.prototype (a `get`, a
  // `value`) is neither read nor called when they are read or applied.
  const describeOwn = Object.getOwnPropertyDescriptor;
  const describe = (object, key) => {
    const desc = describeOwn(object, key);
    return desc && { __proto__: null, ...desc };
  };
  const define = Object.defineProperty;
  const remove = Reflect.deleteProperty;
  const reflect = Reflect.apply;
  const HIDDEN = { __proto__: null, value: undefined, writable: true, enumerable: false, configurable: true };
  // What hide() answers when it left the property alone (read-only, or Error frozen).
  const UNTOUCHED = {};
  const hide = () => {
    const saved = describe(errors, KEY);
    try {
      if (!saved) define(errors, KEY, HIDDEN);
      else if (saved.configurable || saved.writable) define(errors, KEY, { __proto__: null, value: undefined });
      else return UNTOUCHED;
    } catch (e) {
      return UNTOUCHED;
    }
    return saved;
  };
  const restore = (saved) => {
    if (saved === UNTOUCHED) return;
    const now = describe(errors, KEY);
    // Set by the page during the call (from a toString the call ran): the page's stands.
    if (!now || now.value !== undefined || now.get || now.set) return;
    if (saved) define(errors, KEY, saved);
    else remove(errors, KEY);
  };
  const wrap = (original) => {
    const name = original.name;
    const wrapper = {
      [name](...args) {
        // Only an object can be an Error or hold one: a call of primitives is left be.
        let objects = false;
        for (let i = 0; i < args.length; i++) {
          const t = typeof args[i];
          if ((t === 'object' && args[i] !== null) || t === 'function') objects = true;
        }
        if (!objects) return reflect(original, this, args);
        const saved = hide();
        try {
          return reflect(original, this, args);
        } finally {
          restore(saved);
        }
      },
    }[name];
    if (original.length) define(wrapper, 'length', { __proto__: null, value: original.length });
    return native(wrapper, original);
  };
  // The methods whose arguments the inspector describes (count, time and the like send
  // only a label's text).
  const DESCRIBING = ['debug', 'error', 'info', 'log', 'warn', 'trace', 'dir', 'dirxml', 'table', 'group', 'groupCollapsed', 'assert', 'timeLog'];
  const patch = (object) => {
    for (let i = 0; i < DESCRIBING.length; i++) {
      const desc = describe(object, DESCRIBING[i]);
      if (desc && typeof desc.value === 'function') define(object, DESCRIBING[i], { __proto__: null, ...desc, value: wrap(desc.value) });
    }
  };
  patch(target);
  // console.context() answers a console of fresh native methods: they are wrapped too.
  const context = describe(target, 'context');
  if (context && typeof context.value === 'function') {
    const make = context.value;
    const wrapper = {
      context(...args) {
        const made = reflect(make, this, args);
        patch(made);
        return made;
      },
    }.context;
    define(wrapper, 'length', { __proto__: null, value: make.length });
    define(target, 'context', { __proto__: null, ...context, value: native(wrapper, make) });
  }
})
