// Small DOM helpers shared by the dashboard's modules.

/** The first element matching a CSS selector. */
export const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element: h("span", {class: "x"}, "text", child). Text is never parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children);
  return el;
}

/** Rebuild a container from data rows only when they changed (keeps focus and selection). */
export function fillWith(el, rows, make) {
  const key = JSON.stringify(rows);
  if (el._key === key) return;
  el._key = key;
  el.replaceChildren(...rows.map(make));
}
