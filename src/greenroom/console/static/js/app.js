// The console's shell: sign-in, the header, and a hash router (`#/deployments/default/docs`)
// that renders one page at a time. A page is `{ pattern, title, render(main, params, ctx) }`;
// `ctx.every(ms, fn)` polls while the page is shown, `ctx.can(scope)` says what the token may do.

import { ApiError, get, setToken, token } from "./api.js";
import { fill, h } from "./dom.js";
import { pages } from "./pages/index.js";

// What each scope implies (docs/api/auth.md): admin all; deploy and controller read.
const IMPLIES = { admin: ["admin", "deploy", "controller", "read", "infer"], deploy: ["deploy", "read"], controller: ["controller", "read"], read: ["read"], infer: ["infer"] };

let me = null; // {id, name, scopes, expires_at} of the signed-in token
let timers = [];
let aborter = new AbortController();

export function can(scope) {
  if (!me) return false;
  return me.scopes.some((held) => (IMPLIES[held] || [held]).includes(scope));
}

function leavePage() {
  for (const timer of timers) clearInterval(timer);
  timers = [];
  aborter.abort();
  aborter = new AbortController();
}

function context() {
  const signal = aborter.signal;
  return {
    me,
    can,
    signal,
    /** Run `fn` every `ms` while this page is shown (first after `ms`: the page drew itself
     * already); an error is logged and the next tick tries again. */
    every(ms, fn) {
      let running = false;
      const tick = async () => {
        if (running || signal.aborted) return;
        running = true;
        try {
          await fn();
        } catch (error) {
          if (error.name !== "AbortError") console.warn(error);
        } finally {
          running = false;
        }
      };
      timers.push(setInterval(tick, ms));
    },
    navigate,
  };
}

export function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function match(hash) {
  const path = hash.replace(/^#/, "") || "/";
  for (const page of pages) {
    const found = page.pattern.exec(path);
    if (found) return { page, params: (found.groups && { ...found.groups }) || {} };
  }
  return null;
}

async function render() {
  leavePage();
  const main = document.getElementById("main");
  if (!token() || !me) {
    if (token() && !me && (await signIn(token(), { quiet: true }))) return render();
    showSignedIn(false);
    return renderSignIn(main);
  }
  showSignedIn(true);
  const found = match(location.hash);
  if (!found) {
    document.title = "Not found · greenroom";
    return fill(main, h("h1", {}, "Not found"), h("p", {}, "This page does not exist. "), h("a", { href: "#/" }, "Back to the overview"));
  }
  for (const [key, value] of Object.entries(found.params)) found.params[key] = decodeURIComponent(value);
  document.title = `${found.page.title(found.params)} · greenroom`;
  fill(main, h("p", { class: "loading" }, "Loading…"));
  try {
    await found.page.render(main, found.params, context());
  } catch (error) {
    if (error.name === "AbortError") return;
    fill(main, h("h1", {}, found.page.title(found.params)), h("p", { class: "error", role: "alert", "data-testid": "page-error" }, error.message));
  }
}

function renderSignIn(main, message) {
  document.title = "Sign in · greenroom";
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "data-testid": "token-input", spellcheck: "false" });
  const error = h("p", { class: "error", role: "alert", "data-testid": "signin-error" }, message || "");
  const form = h(
    "form",
    {
      class: "card signin",
      onsubmit: async (event) => {
        event.preventDefault();
        fill(error, "");
        const ok = await signIn(input.value.trim());
        if (ok) render();
        else fill(error, lastSignInError);
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste a greenroom token. It is kept for this browser tab only and sent only in the Authorization header."),
    h("label", { for: "token" }, "Token"),
    input,
    h("button", { type: "submit", class: "primary", "data-testid": "signin-button" }, "Sign in"),
    error,
  );
  fill(main, form);
  input.focus();
}

let lastSignInError = "";

async function signIn(value, { quiet = false } = {}) {
  if (!value) {
    lastSignInError = "Paste a token first.";
    return false;
  }
  setToken(value);
  try {
    me = await get("/v1/tokens/self");
    return true;
  } catch (error) {
    me = null;
    setToken(null);
    lastSignInError = error instanceof ApiError && error.status === 401 ? "This token is unknown, revoked or expired." : error.message;
    if (quiet) lastSignInError = "";
    return false;
  }
}

function signOut(message) {
  leavePage();
  setToken(null);
  me = null;
  showSignedIn(false);
  renderSignIn(document.getElementById("main"), message);
}

function showSignedIn(signedIn) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  if (!signedIn) return;
  fill(document.getElementById("whoami"), `${me.name} (${me.scopes.join(", ")})`);
  for (const link of document.querySelectorAll("[data-needs]")) link.hidden = !can(link.dataset.needs);
  refreshReadiness();
}

async function refreshReadiness() {
  const badge = document.getElementById("readyz");
  try {
    const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
    fill(badge, response.ok ? "ready" : "not ready");
    badge.className = `badge ${response.ok ? "ok" : "bad"}`;
  } catch {
    fill(badge, "unreachable");
    badge.className = "badge bad";
  }
}

window.addEventListener("hashchange", render);
window.addEventListener("greenroom:signed-out", (event) => {
  if (me) signOut(`Signed out: ${event.detail}`);
});
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
  setInterval(() => me && refreshReadiness(), 10000);
  render();
});
