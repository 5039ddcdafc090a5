// Helpers of the MCP tools, evaluated in an isolated world of the broker's (the page's
// scripts never see them). Each is an expression: `(HELPERS).name(args…)`.
({
  // A compact outline of what a person sees: headings, text, and every element one can act
  // on, numbered `ref=eN`. The number is kept in a `data-cdpgate-ref` attribute, so an
  // element keeps its reference across snapshots until the document is replaced.
  snapshot(limit) {
    const ATTR = 'data-cdpgate-ref';
    let next = 0;
    for (const el of document.querySelectorAll('[' + ATTR + ']')) {
      next = Math.max(next, parseInt(el.getAttribute(ATTR).slice(1), 10) || 0);
    }
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
    const push = (depth, line) => {
      if (cut) return;
      const text = '  '.repeat(Math.min(depth, 8)) + '- ' + line;
      if (size + text.length + 1 > limit) {
        cut = true;
        return;
      }
      lines.push(text);
      size += text.length + 1;
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
          let ref = el.getAttribute(ATTR);
          if (!ref) {
            ref = 'e' + ++next;
            el.setAttribute(ATTR, ref);
          }
          let name = labelOf(el);
          if (!name && tag !== 'input' && tag !== 'textarea' && tag !== 'select') name = el.innerText;
          if (!name && tag === 'input' && role === 'button') name = el.value;
          let line = role + (name ? ' "' + clean(name, 120) + '"' : '') + ' [ref=' + ref + ']';
          if (role === 'textbox' && el.value) line += el.type === 'password' ? ' value=•••' : ' value="' + clean(el.value, 80) + '"';
          if ((role === 'checkbox' || role === 'radio') && el.checked) line += ' [checked]';
          if (el.disabled) line += ' [disabled]';
          if (tag === 'a' && el.href) line += ' -> ' + clean(el.getAttribute('href'), 200);
          if (tag === 'select') {
            const opts = [...el.options].slice(0, 50).map((o) => (o.selected ? '*' : '') + '"' + clean(o.label, 60) + '"');
            line += ' options: ' + opts.join(', ');
          }
          push(depth, line);
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
    return {
      url: location.href,
      title: document.title,
      text: lines.join('\n') + (cut ? '\n- (snapshot cut at ' + limit + ' characters)' : ''),
    };
  },

  // The element `ref` names, scrolled into view: its centre in the viewport, or why not.
  locate(ref) {
    const el = document.querySelector('[data-cdpgate-ref="' + CSS.escape(ref) + '"]');
    if (!el) return { missing: true };
    el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return { hidden: true };
    return { x: r.left + r.width / 2, y: r.top + r.height / 2, disabled: !!el.disabled };
  },

  // Focuses the element for typing; with `clear`, empties it first.
  focus(ref, clear) {
    const el = document.querySelector('[data-cdpgate-ref="' + CSS.escape(ref) + '"]');
    if (!el) return { missing: true };
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
  select(ref, values) {
    const el = document.querySelector('[data-cdpgate-ref="' + CSS.escape(ref) + '"]');
    if (!el) return { missing: true };
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

  // Scrolls the element into view, or the page by `dy` pixels.
  scroll(ref, dy) {
    if (ref) {
      const el = document.querySelector('[data-cdpgate-ref="' + CSS.escape(ref) + '"]');
      if (!el) return { missing: true };
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
