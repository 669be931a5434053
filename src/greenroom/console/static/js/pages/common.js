// Small things several pages share: served names, task kinds and links, short ids.

/** Task kinds, as the Tasks API's paths name them (`/internal/inference-deployment/<kind>/…`). */
export const TASK_KINDS = ["deploy", "delete", "promote", "finish", "abort"];

/** A task in one of these has ended: it never changes again. */
export const FINAL_STATUSES = ["done", "failed", "canceled", "refused"];

export const TASKS_API = "/internal/inference-deployment";

/** `name` in workspace `default`, `workspace/name` elsewhere (greenroom.schemas.served_name). */
export function servedName(workspace, name) {
  return workspace === "default" ? name : `${workspace}/${name}`;
}

/** [workspace, name] of a served name: without a `/` it is in `default`. */
export function splitServedName(served) {
  const at = served.lastIndexOf("/");
  return at < 0 ? ["default", served] : [served.slice(0, at) || "default", served.slice(at + 1)];
}

const enc = encodeURIComponent;

export function deploymentHash(workspace, name) {
  return `#/deployments/${enc(workspace)}/${enc(name)}`;
}

export function migrationHash(workspace, name) {
  return `#/migrations/${enc(workspace)}/${enc(name)}`;
}

/** The kind of a task: its id's prefix (`promote-…`), else what its metadata says. A client
 * may choose a task's id, so the prefix is a hint; the task page tries the other kinds. */
export function taskKind(task) {
  const id = String(task.id || "");
  const prefixed = TASK_KINDS.find((kind) => id.startsWith(`${kind}-`));
  if (prefixed) return prefixed;
  const meta = task.metadata || {};
  if (meta.deletion_type !== undefined) return "delete";
  if (meta.mode !== undefined) return "promote";
  return "deploy";
}

export function taskHash(task, kind = taskKind(task)) {
  return `#/tasks/${enc(kind)}/${enc(task.id)}`;
}

/** The task's path in the Tasks API. */
export function taskPath(kind, id) {
  return `${TASKS_API}/${enc(kind)}/${enc(id)}`;
}

/** The first characters of a long id (UUIDs), for tables; the whole id is the title. */
export function shortId(id, length = 8) {
  if (!id) return "—";
  const text = String(id);
  return text.length > length + 1 ? `${text.slice(0, length)}…` : text;
}

/** The content hash of a revision (workloads API): its image is `<source>@sha256:<hash>`. */
export function revisionHash(revision) {
  for (const image of (revision && revision.images) || []) {
    const at = image.lastIndexOf("@sha256:");
    if (at >= 0) return image.slice(at + "@sha256:".length);
  }
  return null;
}

/** The revision's embedding space, named as `x-embedding-space` names it:
 * `<model id>@<first 12 of the content hash>/<dimension>/<l2 | none>`. The dimension and
 * normalisation come from the registry's model when it names the same weights; else they are
 * unknown (`…`). */
export function embeddingSpace(modelId, contentHash, model) {
  if (!modelId || !contentHash) return null;
  const base = `${modelId}@${contentHash.slice(0, 12)}`;
  if (model && model.content_hash === contentHash) {
    return `${base}/${model.dimension}/${model.normalize ? "l2" : "none"}`;
  }
  return `${base}/…`;
}

/** Read `key=value` lines as the CLI reads `--set` values (greenroom.cli._parse_sets): an
 * integer value is a number, any other a string; `key=null` sends null (back to the default).
 * Blank lines and lines starting with `#` are skipped. Throws an Error naming the bad line. */
export function parseOverrides(text) {
  const config = {};
  const lines = String(text || "").split(/\r?\n/);
  lines.forEach((line, index) => {
    const item = line.trim();
    if (!item || item.startsWith("#")) return;
    const at = item.indexOf("=");
    const key = at < 0 ? "" : item.slice(0, at).trim();
    if (!key) throw new Error(`Line ${index + 1}, '${item}', is not key=value.`);
    const raw = item.slice(at + 1).trim();
    config[key] = /^-?\d+$/.test(raw) ? Number.parseInt(raw, 10) : raw === "null" ? null : raw;
  });
  return config;
}

/** `key=value, key=value` of an overrides object, as a person reads it in a sentence. */
export function describeOverrides(config) {
  return Object.entries(config)
    .map(([key, value]) => `${key}=${value === null ? "null (its default)" : value}`)
    .join(", ");
}

/** Wait `ms`, or less when `signal` aborts (then it rejects with an AbortError). */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(new DOMException("Aborted", "AbortError"));
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener(
        "abort",
        () => {
          clearTimeout(timer);
          reject(new DOMException("Aborted", "AbortError"));
        },
        { once: true },
      );
    }
  });
}

/** The `q` quantile (0…1) of a histogram: `counts[i]` counts values at most `bounds[i]` (and
 * above `bounds[i - 1]`); the last count is above the last bound. Linear within a bucket, as
 * Prometheus' histogram_quantile; a quantile in the last bucket is the last bound. null when
 * the histogram is empty. */
export function histogramQuantile(bounds, counts, q) {
  const total = counts.reduce((sum, n) => sum + n, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i += 1) {
    if (seen + counts[i] >= rank && counts[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lower = i === 0 ? 0 : bounds[i - 1];
      return lower + (bounds[i] - lower) * ((rank - seen) / counts[i]);
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

/** Add `more` into `into`, entry by entry (histogram counts). */
export function addCounts(into, more) {
  (more || []).forEach((n, i) => {
    into[i] = (into[i] || 0) + n;
  });
  return into;
}
