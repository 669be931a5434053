// Building the page: every value is set as text (textContent, attributes), never parsed as HTML.
// Descriptions and status messages are written by other tokens: nothing here may run them.

/** An element: `attrs` are attributes (`on*` functions become listeners, `class`, `dataset`,
 * booleans set or drop the attribute); children are nodes or values shown as text. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A table: `columns` are [heading, (row) => cell value or node]; `rowAttrs(row)` attributes. */
export function table(columns, rows, { testid, rowAttrs, empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "empty", "data-testid": testid && `${testid}-empty` }, empty);
  return h(
    "div",
    // focusable, so a table wider than the screen can be scrolled from the keyboard
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": testid ? testid.replace(/-/g, " ") : "table" },
    h(
      "table",
      { "data-testid": testid },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          // a column without a heading (its buttons) still has one for screen readers
          columns.map(([heading]) => h("th", { scope: "col" }, heading || h("span", { class: "visually-hidden" }, "Actions"))),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h("tr", rowAttrs ? rowAttrs(row) : {}, columns.map(([, cell]) => h("td", {}, cell(row)))),
        ),
      ),
    ),
  );
}

/** A titled section. */
export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

/** A definition list of [term, value] pairs. */
export function facts(pairs, attrs = {}) {
  return h(
    "dl",
    { class: "facts", ...attrs },
    pairs.flatMap(([term, value, testid]) => [
      h("dt", {}, term),
      h("dd", { "data-testid": testid }, value ?? "—"),
    ]),
  );
}
