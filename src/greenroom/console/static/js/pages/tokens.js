// Tokens (admin, docs/api/auth.md): the list without secrets, revoked ones marked; create one
// (its secret shown once, here); revoke one.

import { del, get, post } from "../api.js";
import { fill, h, section, table } from "../dom.js";
import { when } from "../format.js";
import { actionButton, confirmAction, notice, show } from "../ui.js";

const SCOPES = [
  ["admin", "everything, tokens and the audit log included"],
  ["deploy", "tasks, deployments, configs, registry and migration writes; implies read"],
  ["controller", "deployment status updates; implies read"],
  ["read", "every GET, /metrics"],
  ["infer", "/v1/embeddings, /v1/models"],
];
const MIN_EXPIRES_IN_S = 60;
const MAX_EXPIRES_IN_S = 3650 * 24 * 3600;
const REFRESH_MS = 10000;

function tokenState(token, now = Date.now()) {
  if (token.revoked_at) return { label: "revoked", kind: "bad" };
  if (token.expires_at && new Date(token.expires_at).getTime() <= now) return { label: "expired", kind: "bad" };
  return { label: "active", kind: "ok" };
}

export const page = {
  pattern: /^\/tokens$/,
  title: () => "Tokens",
  async render(main, _params, ctx) {
    if (!ctx.can("admin")) {
      fill(main, h("h1", {}, "Tokens"), h("p", { class: "empty", "data-testid": "tokens-admin-only" }, "Only an admin token can list, create and revoke tokens."));
      return;
    }
    const where = notice("tokens-notice");
    const listEl = h("div");
    const created = h("div", { "data-testid": "token-created", role: "status", "aria-live": "polite" });

    const refresh = async () => {
      const tokens = await get("/v1/tokens", { signal: ctx.signal });
      renderList(tokens);
    };
    const renderList = (tokens) => {
      const now = Date.now();
      const sorted = [...tokens].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
      fill(
        listEl,
        table(
          [
            ["name", (t) => [t.name, t.id === ctx.me.id ? h("span", { class: "muted" }, " (this token)") : null]],
            ["id", (t) => h("span", { class: "mono" }, t.id)],
            ["scopes", (t) => t.scopes.join(", ")],
            ["state", (t) => {
              const state = tokenState(t, now);
              const mark = h("span", { class: `badge ${state.kind}`, "data-testid": "token-state" }, state.label);
              return t.revoked_at ? [mark, h("br"), h("span", { class: "muted" }, when(t.revoked_at))] : mark;
            }],
            ["created", (t) => when(t.created_at)],
            ["last used", (t) => when(t.last_used_at)],
            ["expires", (t) => (t.expires_at ? when(t.expires_at) : "never")],
            ["", (t) => (t.revoked_at ? "" : revokeButton(t))],
          ],
          sorted,
          {
            testid: "tokens-table",
            empty: "No tokens.",
            rowAttrs: (t) => ({ "data-testid": "token-row", "data-token-id": t.id, "data-revoked": t.revoked_at ? "true" : "false" }),
          },
        ),
      );
    };
    const revokeButton = (t) => {
      const button = actionButton(
        "Revoke",
        "admin",
        async () => {
          const self = t.id === ctx.me.id;
          const text = `Revoke the token “${t.name}” (${t.id}, scopes ${t.scopes.join(", ")})? Every request that carries it is refused (401) from now on; this cannot be undone.${self ? " It is the token this console is signed in with: you will be signed out." : ""}`;
          if (!(await confirmAction("Revoke a token", text, { confirmLabel: "Revoke", danger: true }))) return;
          await del(`/v1/tokens/${encodeURIComponent(t.id)}`, { signal: ctx.signal });
          await refresh();
          show(where, `Revoked the token “${t.name}” (${t.id}).`, "info");
        },
        { testid: "token-revoke-button", danger: true, notice: where },
      );
      button.style.whiteSpace = "nowrap"; // table cells may break anywhere; a button's label not
      return button;
    };

    // the form
    const nameInput = h("input", { id: "token-name", type: "text", autocomplete: "off", maxlength: "255", required: true, "data-testid": "token-name" });
    const boxes = SCOPES.map(([scope, meaning]) => {
      const box = h("input", { id: `token-scope-${scope}`, type: "checkbox", value: scope, "data-testid": `token-scope-${scope}` });
      return { scope, box, label: h("label", { for: `token-scope-${scope}` }, box, ` ${scope} `, h("span", { class: "muted" }, `— ${meaning}`)) };
    });
    const expiresIn = h("input", {
      id: "token-expires-in",
      type: "number",
      min: String(MIN_EXPIRES_IN_S),
      max: String(MAX_EXPIRES_IN_S),
      step: "1",
      inputmode: "numeric",
      placeholder: "never expires",
      "data-testid": "token-expires-in",
    });
    const create = actionButton(
      "Create token",
      "admin",
      async () => {
        const name = nameInput.value.trim();
        const scopes = boxes.filter((b) => b.box.checked).map((b) => b.scope);
        if (!name) return show(where, "Give the token a name.", "error");
        if (!scopes.length) return show(where, "Tick one scope or more.", "error");
        const body = { name, scopes };
        const seconds = expiresIn.value.trim();
        if (seconds) {
          const value = Number(seconds);
          if (!Number.isInteger(value) || value < MIN_EXPIRES_IN_S || value > MAX_EXPIRES_IN_S) {
            return show(where, `Expires in is a whole number of seconds from ${MIN_EXPIRES_IN_S} to ${MAX_EXPIRES_IN_S} (ten years), or empty for a token that never expires.`, "error");
          }
          body.expires_in = value;
        }
        const answer = await post("/v1/tokens", body, { signal: ctx.signal });
        showCreated(answer);
        nameInput.value = "";
        expiresIn.value = "";
        for (const b of boxes) b.box.checked = false;
        await refresh();
        show(where, `Created the token “${answer.name}” (${answer.id}).`, "info");
      },
      { testid: "token-create-button", primary: true, notice: where },
    );
    const showCreated = (answer) => {
      const value = h("code", { class: "secret", "data-testid": "token-created-value" }, answer.token);
      const copy = h("button", { type: "button", "data-testid": "token-copy-button" }, "Copy");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(answer.token);
          fill(copy, "Copied");
        } catch {
          fill(copy, "Select it and copy by hand");
        }
      });
      fill(
        created,
        section(
          `New token “${answer.name}”`,
          h("p", {}, "Copy this token now: it will not be shown again (greenroom keeps only its hash)."),
          h("p", {}, value),
          h("p", { class: "muted" }, `Scopes ${answer.scopes.join(", ")}; ${answer.expires_at ? `expires ${when(answer.expires_at)}` : "never expires"}.`),
          h("div", { class: "actions" }, copy),
        ),
      );
    };

    const form = h(
      "form",
      { "data-testid": "token-form", onsubmit: (event) => event.preventDefault() },
      h("label", { for: "token-name" }, "Name"),
      nameInput,
      h("fieldset", {}, h("legend", {}, "Scopes"), boxes.map((b) => b.label)),
      h("label", { for: "token-expires-in" }, "Expires in (seconds; empty: never)"),
      expiresIn,
      h("div", { class: "actions" }, create),
    );

    fill(
      main,
      h(
        "div",
        { "data-testid": "tokens-page" },
        h("h1", {}, "Tokens"),
        where,
        created,
        section("Tokens", listEl),
        section("Create a token", form),
      ),
    );
    await refresh();
    ctx.every(REFRESH_MS, async () => {
      if (document.querySelector("dialog[open]")) return; // a revoke is being confirmed
      await refresh();
    });
  },
};
