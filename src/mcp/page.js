// Helpers of the MCP tools, evaluated in an isolated world of the broker's (the page's
// scripts never see them). Each is an expression: `(HELPERS).name(args…)`; those that act on
// an element are called on it (`this`, passed on as the first argument).
({
  // A compact outline of what a person sees: headings, text, and every element one can act
  // on. The elements are kept in this world's `snapshotElements` (the page's scripts do not
  // see this world) and each line naming one is `[before, index, after]`: the broker turns
  // the index into the element's `ref=eN` (N, Chrome's id of the DOM node, is stable while
  // the node lives), so nothing is written into the page.
  snapshot(limit) {
    const elements = [];
    globalThis.snapshotElements = elements;
    const clean = (s, n) => {
      s = String(s || '').replace(/\s+/g, ' ').trim();
      return s.length > n ? s.slice(0, n) + '…' : s;
    };
    const visible = (el) => {
      const r = el.getBoundingClientRect();
      if (r.width < 1 || r.height < 1) return false;
      const s = getComputedStyle(el);
      return s.visibility !== 'hidden' && s.display !== 'none';
    };
    const labelOf = (el) => {
      const aria = el.getAttribute('aria-label');
      if (aria) return aria;
      const by = el.getAttribute('aria-labelledby');
      if (by) {
        const t = by.split(/\s+/).map((id) => document.getElementById(id)).filter(Boolean);
        if (t.length) return t.map((e) => e.innerText).join(' ');
      }
      if (el.labels && el.labels.length) return [...el.labels].map((l) => l.innerText).join(' ');
      return el.getAttribute('placeholder') || el.getAttribute('title') || el.getAttribute('alt') || el.getAttribute('name') || '';
    };
    const roleOf = (el) => {
      const role = el.getAttribute('role');
      if (role) return role;
      const tag = el.tagName.toLowerCase();
      if (tag === 'a') return 'link';
      if (tag === 'button' || tag === 'summary') return 'button';
      if (tag === 'select') return el.multiple ? 'listbox' : 'combobox';
      if (tag === 'textarea') return 'textbox';
      if (tag === 'input') {
        const t = (el.type || 'text').toLowerCase();
        if (t === 'checkbox' || t === 'radio') return t;
        if (t === 'submit' || t === 'button' || t === 'reset' || t === 'image') return 'button';
        if (t === 'range') return 'slider';
        if (t === 'hidden') return null;
        return 'textbox';
      }
      if (el.isContentEditable) return 'textbox';
      return null;
    };
    const actionable = (el) =>
      el.matches('a[href], button, input, select, textarea, summary, [role=button], [role=link], [role=checkbox], [role=tab], [role=menuitem], [onclick], [contenteditable=""], [contenteditable=true]');
    const lines = [];
    let size = 0;
    let cut = false;
    const push = (depth, line, after) => {
      if (cut) return;
      const indent = '  '.repeat(Math.min(depth, 8)) + '- ';
      // A reference (` [ref=eN]`) is counted at 14 characters: N up to 6 digits.
      const length = indent.length + line.length + (after === undefined ? 0 : after.length + 14) + 1;
      if (size + length > limit) {
        cut = true;
        return;
      }
      lines.push(after === undefined ? indent + line : [indent + line, elements.length - 1, after]);
      size += length;
    };
    const walk = (node, depth) => {
      for (const child of node.childNodes) {
        if (cut) return;
        if (child.nodeType === Node.TEXT_NODE) {
          const t = clean(child.textContent, 300);
          if (t && child.parentElement && visible(child.parentElement)) push(depth, 'text: ' + t);
          continue;
        }
        if (child.nodeType !== Node.ELEMENT_NODE) continue;
        const el = child;
        const tag = el.tagName.toLowerCase();
        if (['script', 'style', 'noscript', 'template', 'svg', 'head'].includes(tag)) continue;
        if (!visible(el) && tag !== 'option') {
          continue;
        }
        const role = roleOf(el);
        if (role && actionable(el)) {
          elements.push(el);
          let name = labelOf(el);
          if (!name && tag !== 'input' && tag !== 'textarea' && tag !== 'select') name = el.innerText;
          if (!name && tag === 'input' && role === 'button') name = el.value;
          const line = role + (name ? ' "' + clean(name, 120) + '"' : '');
          let after = '';
          if (role === 'textbox' && el.value) after += el.type === 'password' ? ' value=•••' : ' value="' + clean(el.value, 80) + '"';
          if ((role === 'checkbox' || role === 'radio') && el.checked) after += ' [checked]';
          if (el.disabled) after += ' [disabled]';
          if (tag === 'a' && el.href) after += ' -> ' + clean(el.getAttribute('href'), 200);
          if (tag === 'select') {
            const opts = [...el.options].slice(0, 50).map((o) => (o.selected ? '*' : '') + '"' + clean(o.label, 60) + '"');
            after += ' options: ' + opts.join(', ');
          }
          push(depth, line, after);
          if (tag === 'a' || tag === 'button' || tag === 'select' || tag === 'summary') continue;
          walk(el, depth + 1);
          continue;
        }
        const heading = /^h([1-6])$/.exec(tag);
        if (heading) {
          push(depth, 'heading "' + clean(el.innerText, 200) + '" [level=' + heading[1] + ']');
          continue;
        }
        if (tag === 'img') {
          const alt = el.getAttribute('alt');
          if (alt) push(depth, 'img "' + clean(alt, 120) + '"');
          continue;
        }
        walk(el, depth);
      }
    };
    walk(document.body || document.documentElement, 0);
    if (cut) lines.push('- (snapshot cut at ' + limit + ' characters)');
    return { url: location.href, title: document.title, lines };
  },

  // The element, scrolled into view: its centre in the viewport, or why not.
  locate(el) {
    el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return { hidden: true };
    return { x: r.left + r.width / 2, y: r.top + r.height / 2, disabled: !!el.disabled };
  },

  // Focuses the element for typing; with `clear`, empties it first.
  focus(el, clear) {
    el.scrollIntoView({ block: 'center', behavior: 'instant' });
    el.focus();
    if (document.activeElement !== el) return { unfocusable: true };
    if (clear) {
      if ('value' in el) {
        el.select && el.select();
      } else {
        document.getSelection().selectAllChildren(el);
      }
      document.execCommand('delete');
    }
    return { ok: true };
  },

  // Selects the options of a <select> whose value or label is one of `values`.
  select(el, values) {
    if (el.tagName !== 'SELECT') return { notSelect: true };
    const picked = [];
    for (const o of el.options) {
      const on = values.includes(o.value) || values.includes(o.label.trim());
      if (on && (el.multiple || picked.length === 0)) picked.push(o);
    }
    if (picked.length === 0) return { none: [...el.options].slice(0, 50).map((o) => o.label.trim()) };
    for (const o of el.options) o.selected = picked.includes(o);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
    return { selected: picked.map((o) => o.label.trim()) };
  },

  // Scrolls the element into view, or (none) the page by `dy` pixels.
  scroll(el, dy) {
    if (el) {
      el.scrollIntoView({ block: 'center', behavior: 'instant' });
    } else {
      scrollBy(0, dy);
    }
    return { x: scrollX, y: scrollY };
  },

  // Whether the document has finished loading.
  ready() {
    return document.readyState === 'complete';
  },
})
