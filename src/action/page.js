// Helpers for single actions, evaluated in an isolated world of the page: they share the
// DOM with the page but none of its globals, so the page cannot see or break them.
// Elements are named the way a person names them (text, label, placeholder, aria-label,
// role and name) or by CSS; each found element is answered with a unique CSS path and a
// fingerprint, so that a cached step can find it again and know whether it is the same.
(() => {
  const norm = (s) => (s || '').replace(/\s+/g, ' ').trim().toLowerCase();
  const TEXT_INPUTS = ['', 'text', 'email', 'password', 'search', 'tel', 'url', 'number', 'date',
    'datetime-local', 'month', 'time', 'week'];

  function roleOf(el) {
    const explicit = el.getAttribute('role');
    if (explicit) return explicit.trim().split(/\s+/)[0].toLowerCase();
    switch (el.localName) {
      case 'button': case 'summary': return 'button';
      case 'a': case 'area': return el.hasAttribute('href') ? 'link' : '';
      case 'select': return el.multiple || el.size > 1 ? 'listbox' : 'combobox';
      case 'textarea': return 'textbox';
      case 'option': return 'option';
      case 'img': return 'img';
      case 'h1': case 'h2': case 'h3': case 'h4': case 'h5': case 'h6': return 'heading';
      case 'input': {
        const type = (el.getAttribute('type') || '').toLowerCase();
        if (['button', 'submit', 'reset', 'image'].includes(type)) return 'button';
        if (type === 'checkbox') return 'checkbox';
        if (type === 'radio') return 'radio';
        if (type === 'range') return 'slider';
        if (type === 'file') return 'file';
        if (TEXT_INPUTS.includes(type)) return type === 'search' ? 'searchbox' : 'textbox';
        return '';
      }
    }
    if (el.isContentEditable && el.hasAttribute('contenteditable')) return 'textbox';
    return '';
  }

  // The roles a person's word stands for ("field" is any text input, "checkbox" a switch too).
  const ROLE_FAMILY = {
    textbox: ['textbox', 'searchbox', 'spinbutton', 'combobox'],
    checkbox: ['checkbox', 'switch', 'menuitemcheckbox'],
    radio: ['radio', 'menuitemradio'],
    combobox: ['combobox', 'listbox'],
    button: ['button'],
    link: ['link'],
    img: ['img', 'image'],
  };
  // A <select> is a combobox but not a field one types into.
  const roleMatches = (wanted, role, el) => (ROLE_FAMILY[wanted] || [wanted]).includes(role)
    && !(wanted === 'textbox' && el.localName === 'select');

  const INTERACTIVE = ['button', 'link', 'textbox', 'searchbox', 'spinbutton', 'combobox', 'listbox',
    'checkbox', 'radio', 'switch', 'slider', 'tab', 'menuitem', 'menuitemcheckbox', 'menuitemradio',
    'option', 'treeitem'];
  const NAMED_BY_CONTENT = ['button', 'link', 'heading', 'tab', 'option', 'menuitem', 'treeitem',
    'checkbox', 'radio', 'switch', 'cell', 'listitem', 'img'];

  function textOf(el) {
    return el.innerText !== undefined ? el.innerText : el.textContent;
  }

  // Every name a person might give the element, best first.
  function namesOf(el) {
    const out = [];
    const add = (v) => { v = norm(v); if (v && !out.includes(v)) out.push(v); };
    add(el.getAttribute('aria-label'));
    const labelledBy = el.getAttribute('aria-labelledby');
    if (labelledBy) {
      add(labelledBy.split(/\s+/).map((id) => { const r = el.getRootNode().getElementById(id); return r ? textOf(r) : ''; }).join(' '));
    }
    if (el.labels) for (const l of el.labels) add(textOf(l));
    const role = roleOf(el);
    if (NAMED_BY_CONTENT.includes(role)) add(textOf(el));
    if (el.localName === 'input' && ['button', 'submit', 'reset'].includes(el.type)) add(el.value || el.type);
    add(el.getAttribute('placeholder'));
    add(el.getAttribute('alt'));
    add(el.getAttribute('title'));
    if (el.localName === 'input' || el.localName === 'textarea' || el.localName === 'select') add(el.getAttribute('name'));
    return out;
  }

  function fingerprint(el) {
    return [el.localName, roleOf(el), (namesOf(el)[0] || '').slice(0, 80)].join('|');
  }

  // How well `names` fit `wanted`: exact beats whole words beats a part; long names lose a little.
  function score(names, wanted) {
    let best = 0;
    for (const n of names) {
      let s = 0;
      if (n === wanted) s = 100;
      else if (n.length <= wanted.length * 4 + 20) {
        const at = n.indexOf(wanted);
        if (at >= 0) {
          const before = at === 0 || !/\w/.test(n[at - 1]);
          const after = at + wanted.length === n.length || !/\w/.test(n[at + wanted.length]);
          s = (before && after ? 60 : 30) - Math.min(20, (n.length - wanted.length) / 5);
        }
      }
      best = Math.max(best, s);
    }
    return best;
  }

  function isVisible(el) {
    const rect = el.getBoundingClientRect();
    if (rect.width <= 0 || rect.height <= 0) return false;
    const style = el.ownerDocument.defaultView.getComputedStyle(el);
    const shown = el.checkVisibility
      ? el.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true })
      : style.visibility !== 'hidden' && style.display !== 'none';
    const frame = frameOf(el);
    return shown && (!frame || isVisible(frame));
  }

  function isEnabled(el) {
    if (el.disabled || el.closest('fieldset[disabled]')) return false;
    return el.getAttribute('aria-disabled') !== 'true';
  }

  // The document inside a same-origin frame, or null (other origins are out of reach).
  function frameDocument(el) {
    if (el.localName !== 'iframe' && el.localName !== 'frame') return null;
    try { return el.contentDocument && el.contentDocument.body ? el.contentDocument : null; } catch (e) { return null; }
  }

  // What a path step after ` >>> ` looks into: a shadow root or a frame's document.
  const inner = (el) => el.shadowRoot || frameDocument(el);

  // Every element of the page, open shadow roots and same-origin frames included, in
  // document order.
  function* allElements(root) {
    for (const el of root.querySelectorAll('*')) {
      yield el;
      const within = inner(el);
      if (within) yield* allElements(within.body || within);
    }
  }

  // The roots whose text is searched: the body, every open shadow root and frame body.
  function* textRoots() {
    if (!document.body) return;
    yield document.body;
    for (const el of allElements(document.body)) {
      const within = inner(el);
      if (within) yield within.body || within;
    }
  }

  // The frame element holding a node's document, if it is not the page's own.
  function frameOf(node) {
    const doc = node.ownerDocument || node;
    return doc !== document && doc.defaultView ? doc.defaultView.frameElement : null;
  }

  // A rectangle in the page's viewport: a frame's content is offset by the frame's box.
  function pageRect(el) {
    const r = el.getBoundingClientRect();
    let [left, top] = [r.left, r.top];
    for (let frame = frameOf(el); frame; frame = frameOf(frame)) {
      const f = frame.getBoundingClientRect();
      left += f.left + frame.clientLeft;
      top += f.top + frame.clientTop;
    }
    return { left, top, width: r.width, height: r.height, local: r };
  }

  // A CSS path unique in the element's tree; inside a shadow root, the host's path, then
  // ` >>> `, then the path within the root.
  function uniquePath(el) {
    const root = el.getRootNode();
    const inFrame = !root.host && root !== document && frameOf(el);
    const parts = [];
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      if (e.id && root.querySelectorAll('#' + CSS.escape(e.id)).length === 1) {
        parts.unshift('#' + CSS.escape(e.id));
        break;
      }
      if (!e.parentElement && !root.host) { parts.unshift(e.localName); break; }
      let i = 1;
      for (let s = e.previousElementSibling; s; s = s.previousElementSibling) if (s.localName === e.localName) i++;
      parts.unshift(`${CSS.escape(e.localName)}:nth-of-type(${i})`);
    }
    const path = parts.join(' > ');
    if (root.host) return `${uniquePath(root.host)} >>> ${path}`;
    return inFrame ? `${uniquePath(inFrame)} >>> ${path}` : path;
  }

  // Elements a path or a user's selector names, through ` >>> ` into shadow roots. A path
  // this file made names one element: the one whose path it is comes first.
  function queryAll(selector) {
    const found = queryEach(selector);
    if (!selector.includes(':nth-of-type(') && !selector.includes(' >>> ')) return found;
    const exact = found.findIndex((el) => uniquePath(el) === selector);
    if (exact > 0) found.unshift(...found.splice(exact, 1));
    return found;
  }

  function queryEach(selector) {
    const steps = selector.split(' >>> ');
    let scopes = [document];
    for (const [i, step] of steps.entries()) {
      const found = scopes.flatMap((s) => Array.from(s.querySelectorAll(step)));
      if (i === steps.length - 1) return found;
      scopes = found.map(inner).filter(Boolean);
    }
    return [];
  }

  function describe(el) {
    const role = roleOf(el) || el.localName;
    const name = (namesOf(el)[0] || '').slice(0, 60);
    return name ? `${role} "${name}"` : role;
  }

  // The interactive element a piece of text belongs to, or the text's own element.
  function owner(el) {
    const interactive = el.closest('a[href],button,summary,label,select,textarea,input,[role=button],[role=link],[role=tab],[role=menuitem],[role=option],[role=checkbox],[role=radio],[role=switch]');
    if (interactive && interactive.localName === 'label' && interactive.control) return interactive.control;
    return interactive || el;
  }

  function candidates(spec) {
    if (spec.css) {
      try { return queryAll(spec.css).map((el) => [el, 100]); }
      catch (e) { throw new Error(`"${spec.css}" is not a valid CSS selector`); }
    }
    const wanted = norm(spec.name);
    const found = new Map();
    const consider = (el, s) => { if (s > 0 && (found.get(el) || 0) < s) found.set(el, s); };
    for (const el of document.body ? allElements(document.body) : []) {
      const role = roleOf(el);
      if (spec.role) {
        if (!roleMatches(spec.role, role, el) && !(spec.role === 'heading' && /^h[1-6]$/.test(el.localName))) continue;
        consider(el, wanted ? score(namesOf(el), wanted) : 50);
      } else if (INTERACTIVE.includes(role)) {
        const s = score(namesOf(el), wanted);
        if (s > 0) consider(el, s + 5);
      }
    }
    if (!spec.role && wanted) {
      // Plain text: the innermost elements whose own text matches, lifted to what they belong to.
      for (const root of textRoots()) {
        const walker = (root.ownerDocument || root).createTreeWalker(root, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
          const parent = node.parentElement;
          if (!parent || ['script', 'style', 'noscript', 'template'].includes(parent.localName)) continue;
          if (!norm(node.data)) continue;
          const s = score([norm(textOf(parent))], wanted);
          if (s > 0) consider(owner(parent), s);
        }
      }
    }
    return Array.from(found.entries()).sort((a, b) => b[1] - a[1]);
  }

  // Finds the element `spec` names and tells whether it is ready for `need`
  // ("present", "visible", "enabled" or "click": the point clicked hits it).
  function locate(spec, need) {
    let list = candidates(spec);
    if (spec.fingerprint) list = list.filter(([el]) => fingerprint(el) === spec.fingerprint);
    if (!list.length) {
      return { state: spec.fingerprint && candidates(spec).length ? 'changed' : 'missing' };
    }
    const top = list[0][1];
    const best = list.filter(([, s]) => s === top).map(([el]) => el);
    const ready = (el) => need === 'present' || (isVisible(el) && (need === 'visible' || isEnabled(el)));
    const el = (need === 'present' && best.find(isVisible)) || best.find(ready) || list.map(([e]) => e).find(ready);
    if (!el) {
      const first = best[0];
      return { state: isVisible(first) ? 'disabled' : 'hidden', element: describe(first) };
    }
    const found = { state: 'ready', selector: uniquePath(el), fingerprint: fingerprint(el), element: describe(el) };
    if (need === 'present') return found;
    const r0 = pageRect(el);
    if (r0.top < 0 || r0.left < 0 || r0.top + r0.height > innerHeight || r0.left + r0.width > innerWidth) {
      // Scrolls the frames that hold it too.
      el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
    }
    const r = pageRect(el);
    found.x = r.left + r.width / 2;
    found.y = r.top + r.height / 2;
    if (need === 'click') {
      // Hit-tested where it lives, in its own frame's coordinates.
      const root = el.getRootNode();
      const local = [r.local.left + r.local.width / 2, r.local.top + r.local.height / 2];
      const hit = root.elementFromPoint(...local);
      const hits = hit && (hit === el || el.contains(hit) || (el.labels && Array.from(el.labels).some((l) => l.contains(hit))));
      if (!hits) return { state: 'covered', element: found.element, by: hit ? describe(hit) : 'nothing' };
    }
    return found;
  }

  function element(selector) {
    const el = queryAll(selector)[0];
    if (!el) throw new Error('the element is gone from the page');
    return el;
  }

  return {
    locate,

    // The file input an element stands for: itself, a label's control, or one inside it.
    fileInput(selector) {
      const el = element(selector);
      const isFile = (e) => e && e.localName === 'input' && (e.type || '').toLowerCase() === 'file';
      if (isFile(el)) return el;
      if (el.localName === 'label' && isFile(el.control)) return el.control;
      const inside = el.querySelector && el.querySelector('input[type=file]');
      return isFile(inside) ? inside : null;
    },

    // Puts the caret in a text field with its content selected, so typing replaces it.
    focusForTyping(selector) {
      const el = element(selector);
      const doc = el.ownerDocument;
      el.focus();
      if (typeof el.select === 'function' && el.localName !== 'select') el.select();
      else if (el.isContentEditable) {
        const range = doc.createRange();
        range.selectNodeContents(el);
        const sel = doc.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
      }
      const active = el.getRootNode().activeElement;
      return active === el || el.contains(active);
    },

    // Chooses an option of a <select> by its text, then its value; answers its text.
    selectOption(selector, wanted) {
      const el = element(selector);
      if (el.localName !== 'select') return { error: 'not-a-select' };
      const w = norm(wanted);
      const options = Array.from(el.options);
      const option = options.find((o) => norm(o.text) === w) || options.find((o) => norm(o.value) === w)
        || options.find((o) => norm(o.text).includes(w));
      if (!option) return { error: 'no-option', options: options.map((o) => o.text.trim()).slice(0, 20) };
      if (option.disabled) return { error: 'disabled-option' };
      option.selected = true;
      el.dispatchEvent(new Event('input', { bubbles: true }));
      el.dispatchEvent(new Event('change', { bubbles: true }));
      return { selected: option.text.trim() };
    },

    checked(selector) {
      const el = element(selector);
      if (typeof el.checked === 'boolean') return el.checked;
      return el.getAttribute('aria-checked') === 'true' || el.getAttribute('aria-pressed') === 'true';
    },

    readText(selector) {
      const el = element(selector);
      if (['input', 'textarea', 'select'].includes(el.localName)) {
        if (el.type === 'password') return '';
        return el.localName === 'select' ? (el.selectedOptions[0] || { text: '' }).text.trim() : el.value;
      }
      return (textOf(el) || '').trim();
    },

    // The page's text, then that of its same-origin frames.
    pageText() {
      const parts = [];
      for (const root of textRoots()) if (root.localName === 'body') parts.push(textOf(root).trim());
      return parts.filter(Boolean).join('\n');
    },

    hasText(wanted) {
      const w = norm(wanted);
      for (const root of textRoots()) if (norm(textOf(root)).includes(w)) return true;
      return false;
    },

    scrollToEnd(bottom) {
      const root = document.scrollingElement || document.documentElement;
      window.scrollTo({ top: bottom ? root.scrollHeight : 0, behavior: 'instant' });
      return Math.round(window.scrollY);
    },

    // What a model is shown: the page's visible interactive elements, numbered.
    snapshot(limit) {
      const items = [];
      for (const el of document.body ? allElements(document.body) : []) {
        const role = roleOf(el);
        if (!INTERACTIVE.includes(role) && role !== 'heading') continue;
        if (!isVisible(el)) continue;
        const item = { role, name: (namesOf(el)[0] || '').slice(0, 100), selector: uniquePath(el), fingerprint: fingerprint(el) };
        if (el.localName === 'input' || el.localName === 'textarea') {
          item.value = el.type === 'password' ? (el.value ? '(hidden)' : '') : String(el.value).slice(0, 100);
          if (el.placeholder) item.placeholder = el.placeholder.slice(0, 100);
        }
        if (typeof el.checked === 'boolean' && ['checkbox', 'radio'].includes(el.type)) item.checked = el.checked;
        if (!isEnabled(el)) item.disabled = true;
        if (el.href) item.href = String(el.href).slice(0, 200);
        items.push(item);
        if (items.length >= limit) break;
      }
      return { title: document.title, url: location.href, text: this.pageText().slice(0, 2000), elements: items };
    },
  };
})()
