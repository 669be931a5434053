// The JSON APIs, as any client calls them: the token travels only in the Authorization header,
// never in a URL. It is kept in sessionStorage: for this browser tab only.

const TOKEN_KEY = "greenroom.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Call an API: `json` is sent as the body; `body` (a File, a string) as it is. Resolves to
 * the parsed answer (null when empty); rejects with an ApiError that carries the API's own
 * sentence. A 401 signs the tab out. */
export async function api(method, path, { json, body, headers = {}, signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  const current = token();
  if (current) init.headers.Authorization = `Bearer ${current}`;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "greenroom cannot be reached; check that it runs.");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, errorMessage(response.status, data));
    if (response.status === 401) window.dispatchEvent(new CustomEvent("greenroom:signed-out", { detail: error.message }));
    throw error;
  }
  return data;
}

export const get = (path, options) => api("GET", path, options);
export const post = (path, json, options = {}) => api("POST", path, { ...options, json });
export const put = (path, json, options = {}) => api("PUT", path, { ...options, json });
export const del = (path, options) => api("DELETE", path, options);

/** The sentence of an error answer, in each API family's shape: `{"detail"}` (tasks,
 * deployments, registry, tokens), `{"code", "message"}` (workloads), `{"error": {"message"}}`
 * (embeddings). */
export function errorMessage(status, data) {
  if (data && typeof data === "object") {
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail) && data.detail.length) {
      return data.detail.map(validationMessage).join("; ");
    }
    if (typeof data.message === "string") return data.message;
    if (data.error && typeof data.error.message === "string") return data.error.message;
  }
  if (typeof data === "string" && data) return data.slice(0, 300);
  return `The server answered ${status}.`;
}

/** The query string of `params` (undefined and null values left out). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** One entry of a 422's list: the field it is about (without the leading "body"), then why. */
function validationMessage(entry) {
  if (!entry || typeof entry !== "object") return String(entry);
  const where = Array.isArray(entry.loc) ? entry.loc.filter((part) => part !== "body").join(".") : "";
  const why = entry.msg || JSON.stringify(entry);
  return where ? `${where}: ${why}` : why;
}
