// Read-only helpers of one-call renders, evaluated in an isolated world of their own (the
// page's scripts never see them). Each is an expression: `(HELPER)(args…)`.
({
  // The navigation's HTTP status (0 when the document has none, as for data: URLs) and URL.
  status() {
    const nav = performance.getEntriesByType('navigation')[0];
    return { status: (nav && nav.responseStatus) || 0, url: location.href };
  },

  // Whether `selector` matches; a selector Chrome cannot parse answers { invalid }.
  has(selector) {
    try {
      return { found: document.querySelector(selector) !== null };
    } catch (e) {
      return { invalid: String(e.message || e) };
    }
  },

  // The whole document's size: at least the window's width (a scrollbar included).
  size() {
    const d = document.documentElement;
    const b = document.body || d;
    return {
      width: Math.max(innerWidth, d.scrollWidth, b.scrollWidth),
      height: Math.max(innerHeight, d.scrollHeight, b.scrollHeight),
    };
  },

  // The first match's box in document coordinates, or null.
  box(selector) {
    let el;
    try {
      el = document.querySelector(selector);
    } catch (e) {
      return { invalid: String(e.message || e) };
    }
    if (!el) return null;
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return null;
    return { x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height };
  },

  // The document as HTML, with its doctype; { over: n } past `limit` characters.
  html(limit) {
    const d = document.doctype ? new XMLSerializer().serializeToString(document.doctype) + '\n' : '';
    const h = d + document.documentElement.outerHTML;
    return h.length > limit ? { over: h.length } : { html: h };
  },

  // The page's main content, the way reader views find it: an <article>, <main> or
  // role=main if the page marks one, else the block whose paragraphs hold the most text
  // (each paragraph's text counted for its parent, half for the grandparent). Navigation,
  // scripts, forms and asides are removed, and links and images made absolute.
  main(limit) {
    const textOf = (el) => (el.innerText || el.textContent || '').trim().length;
    let root = null;
    const marked = [...document.querySelectorAll('article, main, [role=main]')];
    if (marked.length) root = marked.reduce((a, b) => (textOf(b) > textOf(a) ? b : a));
    if (!root || textOf(root) < 200) {
      const scores = new Map();
      for (const p of document.querySelectorAll('p, pre, li, td, blockquote')) {
        const n = (p.textContent || '').trim().length;
        if (n < 25) continue;
        const add = (el, s) => el && el !== document.documentElement && scores.set(el, (scores.get(el) || 0) + s);
        add(p.parentElement, n);
        add(p.parentElement && p.parentElement.parentElement, n / 2);
      }
      let best = null;
      let top = 0;
      for (const [el, s] of scores) if (s > top) [best, top] = [el, s];
      if (best && (!root || top > textOf(root))) root = best;
    }
    root = (root || document.body || document.documentElement).cloneNode(true);
    const drop = 'script, style, noscript, template, iframe, object, embed, form, nav, aside, footer, svg, canvas, button, input, select, textarea, [hidden], [aria-hidden=true]';
    for (const el of root.querySelectorAll(drop)) el.remove();
    for (const a of root.querySelectorAll('a[href]')) a.setAttribute('href', a.href);
    for (const img of root.querySelectorAll('img[src]')) img.setAttribute('src', img.src);
    const html = root.outerHTML;
    if (html.length > limit) return { over: html.length };
    return { title: document.title || '', html };
  },

  // For each [name, selector]: up to `most` matches, each { text, attributes, html? },
  // every string cut at its bound.
  scrape(selectors, includeHtml, most, textLimit, htmlLimit, attrLimit) {
    const out = {};
    for (const [name, selector] of selectors) {
      let found;
      try {
        found = document.querySelectorAll(selector);
      } catch (e) {
        return { invalid: name, message: String(e.message || e) };
      }
      out[name] = [...found].slice(0, most).map((el) => {
        const item = { text: (el.innerText || el.textContent || '').trim().slice(0, textLimit), attributes: {} };
        for (const a of [...el.attributes].slice(0, 50)) item.attributes[a.name] = a.value.slice(0, attrLimit);
        if (includeHtml) item.html = el.outerHTML.slice(0, htmlLimit);
        return item;
      });
    }
    return { results: out };
  },
})
