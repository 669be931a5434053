// Shared pieces of the pages: action buttons that follow the token's scopes, the confirmation
// dialog, and a place for the answer of an action.

import { can } from "./app.js";
import { fill, h } from "./dom.js";

/** A button that does something: `data-action` on it, disabled (with the reason as its title)
 * when the token lacks `scope`. `run()` may return a promise; while it runs the button is busy,
 * and an error lands in `notice` (see `notice()`). */
export function actionButton(label, scope, run, { testid, primary = false, danger = false, notice: where } = {}) {
  const allowed = can(scope);
  const button = h(
    "button",
    {
      type: "button",
      class: [primary && "primary", danger && "danger"].filter(Boolean).join(" ") || null,
      "data-action": label,
      "data-testid": testid,
      disabled: !allowed,
      title: allowed ? null : `Needs the ${scope} scope`,
    },
    label,
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await run();
    } catch (error) {
      if (where) show(where, error.message, "error");
      else console.warn(error);
    } finally {
      button.removeAttribute("aria-busy");
      button.disabled = !can(scope);
    }
  });
  return button;
}

/** Ask before doing it: resolves true when the user confirms `text`. */
export function confirmAction(title, text, { confirmLabel = "Confirm", danger = false } = {}) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { "data-testid": "confirm-dialog", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      h("p", { "data-testid": "confirm-text" }, text),
    );
    const close = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    dialog.append(
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", "data-testid": "confirm-cancel", onclick: () => close(false) }, "Cancel"),
        h("button", { type: "button", class: danger ? "danger" : "primary", "data-testid": "confirm-ok", onclick: () => close(true) }, confirmLabel),
      ),
    );
    dialog.addEventListener("cancel", () => close(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A live region for the outcome of actions. */
export function notice(testid = "notice") {
  return h("p", { class: "notice", role: "status", "aria-live": "polite", "data-testid": testid });
}

export function show(where, text, kind = "info") {
  where.className = `notice ${kind}`;
  fill(where, text);
}

/** A status badge (READY, FAILED, done, Running…): its class follows the value. */
export function badge(value, testid) {
  const text = value ?? "—";
  const lower = String(text).toLowerCase();
  const kind = /ready|done|running|live|ok|promoted|finished/.test(lower) ? "ok" : /fail|lost|error|refused|abort|degraded/.test(lower) ? "bad" : /pending|processing|deploying|starting|staged|adapted|initializing/.test(lower) ? "busy" : "";
  return h("span", { class: `badge ${kind}`, "data-testid": testid }, text);
}
