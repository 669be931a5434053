// The audit log (admin, docs/api/auth.md): every control-plane write, refused ones included,
// newest first, a page at a time. Never a body, a query or a token: there is none to show.

import { get, query } from "../api.js";
import { fill, h, table } from "../dom.js";
import { when } from "../format.js";
import { badge } from "../ui.js";

const PAGE_SIZE = 50;
const REFRESH_MS = 10000;

function objectText(object) {
  const entries = Object.entries(object || {});
  return entries.length ? entries.map(([key, value]) => `${key}=${value}`).join(", ") : "—";
}

export const page = {
  pattern: /^\/audit$/,
  title: () => "Audit",
  async render(main, _params, ctx) {
    if (!ctx.can("admin")) {
      fill(main, h("h1", {}, "Audit"), h("p", { class: "empty", "data-testid": "audit-admin-only" }, "Only an admin token can read the audit log."));
      return;
    }
    let current = 1;
    let totalPages = 1;
    const listEl = h("div");
    const where = h("p", { class: "muted", role: "status", "data-testid": "audit-page-info" });
    const prev = h("button", { type: "button", "data-testid": "audit-prev" }, "← Newer");
    const next = h("button", { type: "button", "data-testid": "audit-next" }, "Older →");

    const load = async (number) => {
      const answer = await get(`/v1/audit${query({ page: number, page_size: PAGE_SIZE })}`, { signal: ctx.signal });
      const pagination = answer.pagination || {};
      current = pagination.page || number;
      totalPages = Math.max(1, pagination.total_pages || 1);
      fill(
        listEl,
        table(
          [
            ["at", (e) => when(e.at)],
            ["token", (e) => (e.principal_name ? h("span", { title: e.principal_id || "" }, e.principal_name) : h("span", { class: "muted" }, "no valid token"))],
            ["client", (e) => h("span", { class: "mono" }, e.client || "—")],
            ["method", (e) => h("span", { class: "mono" }, e.method)],
            ["path", (e) => h("span", { class: "mono" }, e.path)],
            ["action", (e) => h("span", { class: "mono" }, e.action)],
            ["object", (e) => h("span", { class: "mono" }, objectText(e.object))],
            ["status", (e) => String(e.status_code)],
            ["result", (e) => badge(e.result, "audit-result")],
          ],
          answer.data || [],
          {
            testid: "audit-table",
            empty: current > 1 ? "No writes on this page." : "No control-plane writes recorded yet.",
            rowAttrs: (e) => ({ "data-testid": "audit-row", "data-audit-id": e.id, "data-result": e.result }),
          },
        ),
      );
      const total = pagination.total_results ?? 0;
      where.className = "muted";
      fill(where, `Page ${current} of ${totalPages} · ${total.toLocaleString()} writes, newest first, ${PAGE_SIZE} a page.`);
      prev.disabled = current <= 1;
      next.disabled = current >= totalPages;
    };
    prev.addEventListener("click", () => current > 1 && load(current - 1).catch(showError));
    next.addEventListener("click", () => current < totalPages && load(current + 1).catch(showError));
    const showError = (error) => {
      if (error.name === "AbortError") return;
      where.className = "error";
      fill(where, error.message);
    };

    fill(
      main,
      h(
        "div",
        { "data-testid": "audit-page" },
        h("h1", {}, "Audit"),
        h("p", { class: "muted" }, "Every control-plane write, refused ones included: who, from where, what, and the answer's status. Bodies, queries and tokens are never recorded."),
        h("section", { class: "card" }, listEl, h("nav", { class: "actions", "aria-label": "Audit pages" }, prev, next, where)),
      ),
    );
    await load(1);
    ctx.every(REFRESH_MS, async () => {
      if (current === 1) {
        await load(1); // the newest writes; older pages stay as they were read
      }
    });
  },
};
