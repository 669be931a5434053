// A served name's embedding migration (docs/api/migrations.md): the stage, the shadow report,
// neighbour overlap over time, the adapter's evaluation against the thresholds, and the actions:
// the shadow fraction, sample texts from a file, fitting the adapter, promote raw / adapted,
// finish and abort (the last four are tasks: the page goes on to the task's page).

import { ApiError, get, post, put } from "../api.js";
import { lineChart } from "../charts.js";
import { facts, fill, h, section } from "../dom.js";
import { duration, number, percent, when } from "../format.js";
import { actionButton, badge, confirmAction, notice, show } from "../ui.js";

const TASKS = "/internal/inference-deployment";
const POLL_MS = 2000;
const MAX_POINTS = 900; // 30 minutes of points at one every 2 s
// The samples endpoint's bounds: texts per call, characters per text, bytes per body; and how
// many texts the server keeps per name (the oldest dropped past it).
const MAX_TEXTS_PER_CALL = 2048;
const MAX_TEXT_CHARS = 8192;
const MAX_BODY_BYTES = 8 * 1024 * 1024 - 1;
const MAX_SAMPLES_KEPT = 20000;
const MIN_PAIRS = 200;

/** The served name of `#/migrations/<ws>/<name>`: `name` in workspace default, else `ws/name`. */
export function servedName(ws, name) {
  return ws === "default" ? name : `${ws}/${name}`;
}

function statePath(ws, name) {
  return `/v1/migrations/${encodeURIComponent(ws)}/${encodeURIComponent(name)}`;
}

function deploymentHash(ws, name) {
  return `#/deployments/${encodeURIComponent(ws)}/${encodeURIComponent(name)}`;
}

function score(value, missing = "—") {
  return value === null || value === undefined ? missing : number(value, 3);
}

function count(value) {
  return value === null || value === undefined ? "—" : Number(value).toLocaleString();
}

function latencyPair(live, staged) {
  const shown = (v) => (v === null || v === undefined ? "—" : `${number(v, v < 10 ? 1 : 0)} ms`);
  return `live ${shown(live)} · staged ${shown(staged)}`;
}

function meets(value, bound) {
  return typeof value === "number" && typeof bound === "number" && value >= bound;
}

function adapterPasses(adapter, thresholds) {
  return (
    !!adapter &&
    meets(adapter.mean_cosine, thresholds?.adapter_mean_cosine) &&
    meets(adapter.neighbour_overlap_at_10, thresholds?.adapter_neighbour_overlap_at_10)
  );
}

// ----- sample files ---------------------------------------------------------------------------

/** The texts of a sample file (one a line; blank lines skipped): the last MAX_SAMPLES_KEPT,
 * each cut to MAX_TEXT_CHARS characters. Throws an Error with a sentence for a file that is not
 * UTF-8 text or holds a NUL character. */
export function readSampleText(content, fileName = "the file") {
  const texts = [];
  let cut = 0;
  const lines = content.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    let text = lines[i];
    if (!text.trim()) continue;
    if (text.includes("\u0000")) throw new Error(`Line ${i + 1} of ${fileName} holds a NUL character; nothing was sent.`);
    const chars = Array.from(text); // characters as the server counts them (code points)
    if (chars.length > MAX_TEXT_CHARS) {
      text = chars.slice(0, MAX_TEXT_CHARS).join("");
      cut += 1;
    }
    texts.push(text);
  }
  const total = texts.length;
  return { texts: texts.slice(-MAX_SAMPLES_KEPT), total, cut };
}

/** The texts in order, in calls the samples endpoint accepts: at most MAX_TEXTS_PER_CALL texts
 * and MAX_BODY_BYTES of JSON body (`{"texts":[…]}`, UTF-8) each. */
export function sampleChunks(texts) {
  const encoder = new TextEncoder();
  const overhead = encoder.encode('{"texts":[]}').length;
  const chunks = [];
  let chunk = [];
  let size = overhead;
  for (const text of texts) {
    const length = encoder.encode(JSON.stringify(text)).length;
    const separator = chunk.length ? 1 : 0;
    if (chunk.length && (chunk.length >= MAX_TEXTS_PER_CALL || size + separator + length > MAX_BODY_BYTES)) {
      chunks.push(chunk);
      chunk = [];
      size = overhead;
    }
    size += (chunk.length ? 1 : 0) + length;
    chunk.push(text);
  }
  if (chunk.length) chunks.push(chunk);
  return chunks;
}

async function fileText(file) {
  const bytes = await file.arrayBuffer();
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new Error(`${file.name} is not UTF-8 text; nothing was sent.`);
  }
}

// ----- the page -------------------------------------------------------------------------------

export const page = {
  pattern: /^\/migrations\/(?<ws>[^/]+)\/(?<name>[^/]+)$/,
  title: ({ ws, name }) => `Migration · ${servedName(ws, name)}`,
  async render(main, { ws, name }, ctx) {
    const served = servedName(ws, name);
    const path = statePath(ws, name);
    const load = async () => {
      try {
        return { state: await get(path, { signal: ctx.signal }) };
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) return { missing: error.message };
        throw error;
      }
    };
    let view = null; // the full view while there is a migration, null while there is none
    let shown = null; // "full" | "none"
    const showAnswer = ({ state, missing }) => {
      if (missing !== undefined) {
        view?.dispose();
        if (shown !== "none") renderNone(main, ws, name, served, missing);
        else fill(main.querySelector("[data-testid=migration-none]"), missing);
        shown = "none";
        view = null;
        return;
      }
      if (shown !== "full") {
        view = renderFull(main, { ws, name, served, path }, ctx);
        shown = "full";
      }
      view.update(state);
    };
    showAnswer(await load());
    ctx.every(POLL_MS, async () => {
      try {
        showAnswer(await load());
        view?.refreshed(null);
      } catch (error) {
        if (error.name === "AbortError") throw error;
        view?.refreshed(error.message);
      }
    });
  },
};

function renderNone(main, ws, name, served, message) {
  fill(
    main,
    h(
      "div",
      { "data-testid": "migration-page" },
      h("h1", {}, "Migration of ", h("span", { class: "mono" }, served)),
      section(
        "No migration",
        h("p", { "data-testid": "migration-none" }, message),
        h("p", {}, "A migration starts with a staged deploy of another model: it brings the new revision up beside the live one, without live traffic."),
        h("p", {}, h("a", { href: deploymentHash(ws, name), "data-testid": "deployment-link" }, `Back to the deployment ${served}`)),
      ),
    ),
  );
}

function renderFull(main, { ws, name, served, path }, ctx) {
  let state = null;
  const where = notice("migration-notice");
  const stage = h("span", { "data-testid": "migration-stage-value" });
  const next = h("p", { class: "muted", "data-testid": "migration-next" });
  const refresh = h("p", { class: "muted", role: "status", "data-testid": "migration-refresh" });

  const revisions = h("div");
  const shadowReport = h("div", { "data-testid": "shadow-report" });
  const adapterBox = h("div", { "data-testid": "adapter-evaluation" });

  // neighbour overlap over time: the state endpoint keeps no history, so the page keeps the
  // points it saw while open (bounded)
  const points = [];
  const chartEl = h("div", { class: "chart", "data-testid": "overlap-chart" });
  const chartCaption = h(
    "p",
    { class: "muted", "data-testid": "overlap-chart-caption" },
    `Points seen while this page is open, one every ${POLL_MS / 1000} s (the last ${MAX_POINTS}); the server keeps no history, so they start again when the page is opened.`,
  );
  let chart = null;
  ctx.signal.addEventListener("abort", () => chart?.destroy());

  // the shadow fraction
  const fraction = h("input", {
    id: "shadow-fraction",
    type: "number",
    min: "0",
    max: "1",
    step: "0.01",
    inputmode: "decimal",
    "data-testid": "shadow-fraction",
  });
  let fractionEdited = false;
  fraction.addEventListener("input", () => {
    fractionEdited = true;
  });
  const saveFraction = actionButton(
    "Set fraction",
    "deploy",
    async () => {
      const value = Number(fraction.value);
      if (fraction.value.trim() === "" || !Number.isFinite(value) || value < 0 || value > 1) {
        show(where, "The shadow fraction is a share from 0 to 1 (0 switches shadowing off).", "error");
        return;
      }
      const answer = await put(`${path}/shadow`, { fraction: value }, { signal: ctx.signal });
      fractionEdited = false;
      fraction.value = String(answer.fraction);
      show(where, `Shadow traffic of ${answer.served_name}: ${percent(answer.fraction)} of its requests.`, "info");
    },
    { testid: "shadow-fraction-save", notice: where },
  );

  // sample texts from a file
  const samplesFile = h("input", { id: "samples-file", type: "file", accept: ".txt,text/plain", "data-testid": "samples-file" });
  const samplesCount = h("strong", { "data-testid": "samples-count" });
  const progress = h("progress", { max: "1", value: "0", hidden: true, "aria-label": "Upload progress", "data-testid": "samples-progress-bar" });
  const progressText = h("p", { class: "muted", role: "status", "data-testid": "samples-progress" });
  const upload = actionButton(
    "Upload samples",
    "deploy",
    async () => {
      const file = samplesFile.files && samplesFile.files[0];
      if (!file) {
        show(where, "Choose a text file first: one sample text a line.", "error");
        return;
      }
      const sample = readSampleText(await fileText(file), file.name);
      if (!sample.texts.length) {
        show(where, `${file.name} has no texts.`, "error");
        return;
      }
      const chunks = sampleChunks(sample.texts);
      const notes = [];
      if (sample.total > sample.texts.length) notes.push(`the server keeps the newest ${MAX_SAMPLES_KEPT.toLocaleString()}, so only the last ${sample.texts.length.toLocaleString()} of ${sample.total.toLocaleString()} are sent`);
      if (sample.cut) notes.push(`${sample.cut} texts were cut to ${MAX_TEXT_CHARS.toLocaleString()} characters`);
      progress.hidden = false;
      progress.max = sample.texts.length;
      progress.value = 0;
      let sent = 0;
      let answer = null;
      fill(progressText, `Sending ${sample.texts.length.toLocaleString()} texts in ${chunks.length} call${chunks.length === 1 ? "" : "s"}…`);
      try {
        for (const chunk of chunks) {
          answer = await post(`${path}/samples`, { texts: chunk }, { signal: ctx.signal });
          sent += chunk.length;
          progress.value = sent;
          fill(progressText, `Sent ${sent.toLocaleString()} of ${sample.texts.length.toLocaleString()} texts.`);
        }
      } catch (error) {
        if (error.name !== "AbortError") fill(progressText, `Sent ${sent.toLocaleString()} of ${sample.texts.length.toLocaleString()} texts before the error.`);
        throw error;
      }
      fill(samplesCount, count(answer.samples));
      const tail = notes.length ? ` (${notes.join("; ")})` : "";
      show(where, `Uploaded ${sent.toLocaleString()} texts from ${file.name}: ${count(answer.samples)} sample texts are stored for ${answer.served_name}${tail}.`, "info");
    },
    { testid: "samples-upload", notice: where },
  );

  // fitting the adapter
  const fitStatus = h("p", { class: "muted", role: "status", "data-testid": "fit-status" });
  const fit = actionButton(
    "Fit adapter",
    "deploy",
    async () => {
      const started = Date.now();
      const tick = () => fill(fitStatus, `Fitting the adapter: both revisions embed every stored sample text, which can take a while… (${duration((Date.now() - started) / 1000)})`);
      tick();
      const timer = setInterval(tick, 1000);
      ctx.signal.addEventListener("abort", () => clearInterval(timer));
      let adapter;
      try {
        adapter = await post(`${path}/adapter`, undefined, { signal: ctx.signal });
      } catch (error) {
        if (error.name !== "AbortError") fill(fitStatus, "The fit did not finish.");
        throw error;
      } finally {
        clearInterval(timer);
      }
      fill(fitStatus, `Fitted in ${duration((Date.now() - started) / 1000)}.`);
      if (state) {
        state.adapter = adapter;
        renderAdapter(adapterBox, adapter, state.thresholds);
      }
      const verdict = adapterPasses(adapter, state?.thresholds)
        ? "it meets the thresholds of an adapted promotion"
        : "it is below the thresholds: an adapted promotion would fail its gate; upload more sample texts and fit again, or promote raw";
      show(where, `Fitted the ${adapter.kind} adapter from ${count(adapter.pairs)} pairs: held-out mean cosine ${score(adapter.mean_cosine)}, neighbour overlap@10 ${score(adapter.neighbour_overlap_at_10)}; ${verdict}.`, "info");
    },
    { testid: "fit-button", notice: where },
  );

  // the stage changes: tasks
  const startTask = async (kind, body) => {
    const task = await post(`${TASKS}/${kind}`, { embedding_model_id: served, ...body }, { signal: ctx.signal });
    ctx.navigate(`#/tasks/${kind}/${encodeURIComponent(task.id)}`);
  };
  const allowChange = h("input", { id: "promote-allow-space-change", type: "checkbox", "data-testid": "promote-allow-space-change" });
  const promoteRaw = actionButton(
    "Promote raw",
    "deploy",
    async () => {
      const staged = state?.staged;
      const text =
        `Promote the staged revision ${staged?.revision_id ?? "?"} of ${served} raw: ${served} will answer in the new embedding space (${staged?.embedding_space ?? "unknown"}) and the live revision ${state?.live?.revision_id ?? "?"} is drained and stopped. ` +
        (allowChange.checked
          ? "Vectors that are not comparable with the live ones may take over: every index built with the old model must be rebuilt."
          : "The compatibility gate fails the promotion if the new vectors are not comparable with the live ones (tick “let vectors that are not comparable take over” to allow it).");
      if (!(await confirmAction("Promote raw", text, { confirmLabel: "Promote raw", danger: allowChange.checked }))) return;
      await startTask("promote", allowChange.checked ? { mode: "raw", allow_embedding_space_change: true } : { mode: "raw" });
    },
    { testid: "promote-raw-button", notice: where },
  );
  const promoteAdapted = actionButton(
    "Promote adapted",
    "deploy",
    async () => {
      const adapter = state?.adapter;
      let text = `Promote the staged revision ${state?.staged?.revision_id ?? "?"} of ${served} adapted: ${served} will answer with the new model's vectors mapped into the live space by the ${adapter?.kind ?? ""} adapter, so existing indexes keep working; the old revision ${state?.live?.revision_id ?? "?"} is retired, and ${served}@live gives the new model's raw vectors for the re-index.`;
      if (!adapter) text += " No adapter is fitted yet: the promotion's gate will fail.";
      else if (!adapterPasses(adapter, state?.thresholds)) text += " The adapter is below the thresholds: the promotion's gate will fail.";
      if (!(await confirmAction("Promote adapted", text, { confirmLabel: "Promote adapted" }))) return;
      await startTask("promote", { mode: "adapted" });
    },
    { testid: "promote-adapted-button", notice: where, primary: true },
  );
  const finish = actionButton(
    "Finish",
    "deploy",
    async () => {
      const text = `Finish the migration of ${served}: ${served} will answer with the new model's raw vectors (${state?.live?.embedding_space ?? "its own space"}) instead of mapped ones, and the adapter is retired. Do it once every index has been rebuilt with ${served}@live.`;
      if (!(await confirmAction("Finish the migration", text, { confirmLabel: "Finish" }))) return;
      await startTask("finish", {});
    },
    { testid: "finish-button", notice: where, primary: true },
  );
  const abort = actionButton(
    "Abort",
    "deploy",
    async () => {
      const text =
        state?.stage === "adapted"
          ? `Abort the migration of ${served}: the old model comes back as a new revision from the old revision's snapshot (smoke-tested, then switched in) and the promoted revision ${state?.live?.revision_id ?? "?"} is withdrawn. ${served} answers in the old space before, during and after.`
          : `Abort the migration of ${served}: the staged revision ${state?.staged?.revision_id ?? "?"} is withdrawn and its replicas stop. ${served} keeps answering with the live revision ${state?.live?.revision_id ?? "?"}, as now.`;
      if (!(await confirmAction("Abort the migration", text, { confirmLabel: "Abort", danger: true }))) return;
      await startTask("abort", {});
    },
    { testid: "abort-button", notice: where, danger: true },
  );
  // a wrapping div: `hidden` on it works (labels are display: block in the style sheet)
  const allowLabel = h("div", {}, h("label", { for: "promote-allow-space-change" }, allowChange, " let vectors that are not comparable take over (raw: every index must be rebuilt)"));
  const fractionControls = h(
    "div",
    {},
    h("label", { for: "shadow-fraction" }, "Shadow fraction (0 to 1: the share of live requests also embedded by the staged revision)"),
    h("div", { class: "actions" }, fraction, saveFraction),
  );

  fill(
    main,
    h(
      "div",
      { "data-testid": "migration-page" },
      h("h1", {}, "Migration of ", h("span", { class: "mono" }, served)),
      h(
        "p",
        {},
        "Stage ",
        h("span", { "data-testid": "migration-stage" }, stage),
        " · ",
        h("a", { href: deploymentHash(ws, name), "data-testid": "deployment-link" }, "the deployment"),
      ),
      next,
      where,
      refresh,
      section("Revisions", revisions),
      h(
        "div",
        { class: "grid" },
        section(
          "Shadow report",
          shadowReport,
          fractionControls,
        ),
        section("Adapter", adapterBox, h("div", { class: "actions" }, fit), fitStatus),
      ),
      section("Neighbour overlap over time", chartEl, chartCaption),
      section(
        "Sample texts",
        h("p", {}, samplesCount, " sample texts stored (the newest 20,000 are kept). They are embedded by both revisions when the adapter is fitted: send texts like your real traffic."),
        h("label", { for: "samples-file" }, "A text file, one sample text a line"),
        h("div", { class: "actions" }, samplesFile, upload),
        progress,
        progressText,
      ),
      section(
        "Promote, finish or abort",
        h("div", { class: "actions" }, promoteAdapted, promoteRaw, finish, abort),
        allowLabel,
      ),
    ),
  );

  const drawChart = () => {
    if (!points.some((p) => p.overlap !== null || p.cosine !== null)) {
      chart?.destroy();
      chart = null;
      fill(chartEl, h("p", { class: "empty" }, "No figure yet: points appear once shadow traffic has compared 11 inputs or more."));
      return;
    }
    const data = [points.map((p) => p.t), points.map((p) => p.overlap), points.map((p) => p.cosine)];
    if (chart) {
      chart.setData(data);
      return;
    }
    chart = lineChart(
      chartEl,
      data[0],
      [
        { label: "neighbour overlap@10", values: data[1] },
        { label: "mean cosine", values: data[2] },
      ],
      { title: "Shadow: staged against live" },
    );
  };

  return {
    dispose() {
      chart?.destroy();
      chart = null;
    },
    refreshed(error) {
      if (error) {
        refresh.className = "error";
        fill(refresh, `Refresh failed: ${error} Showing the last answer.`);
      } else if (refresh.textContent) {
        refresh.className = "muted";
        fill(refresh, "");
      }
    },
    update(answer) {
      state = answer;
      fill(stage, badge(answer.stage));
      const staged = answer.stage === "staged";
      const adapted = answer.stage === "adapted";
      fill(
        next,
        staged
          ? `Next: let shadow traffic run, upload sample texts and fit an adapter, then promote adapted (existing indexes keep working) or raw (indexes must be rebuilt); abort withdraws the staged revision. The new revision answers on ${served}@staged.`
          : adapted
            ? `Next: re-index with ${served}@live, then finish; abort brings the old model back.`
            : "",
      );
      renderRevisions(revisions, answer);
      renderShadow(shadowReport, answer.shadow, answer.stage);
      renderAdapter(adapterBox, answer.adapter, answer.thresholds);
      fill(samplesCount, count(answer.samples));
      if (!fractionEdited && answer.shadow && typeof answer.shadow.fraction === "number" && document.activeElement !== fraction) {
        fraction.value = String(answer.shadow.fraction);
      }
      // what the stage allows: fitting and promoting need a staged revision, finishing an
      // adapted promotion; abort and the rest apply to both
      for (const button of [promoteRaw, promoteAdapted, fit]) button.hidden = !staged;
      allowLabel.hidden = !staged;
      fractionControls.hidden = !staged; // shadow traffic needs the staged and the live revision
      finish.hidden = !adapted;
      if (answer.shadow) {
        points.push({ t: Date.now() / 1000, overlap: answer.shadow.neighbour_overlap_at_10 ?? null, cosine: answer.shadow.mean_cosine ?? null });
        if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
      }
      drawChart();
    },
  };
}

function renderRevisions(el, state) {
  const live = state.live || {};
  const staged = state.staged;
  fill(
    el,
    facts([
      ["live revision", live.revision_id ? h("span", { class: "mono" }, live.revision_id) : "—", "migration-live-revision"],
      ["live embedding space", live.embedding_space ? h("span", { class: "mono" }, live.embedding_space) : "unknown"],
      ["staged revision", staged ? h("span", { class: "mono" }, staged.revision_id) : "none", "migration-staged-revision"],
      ["staged embedding space", staged?.embedding_space ? h("span", { class: "mono" }, staged.embedding_space) : "—"],
      ["staged phase", staged ? badge(staged.phase) : "—"],
    ]),
  );
}

function renderShadow(el, shadow, stage) {
  if (!shadow) {
    const why =
      stage === "adapted"
        ? "No shadow traffic after an adapted promotion: the old revision no longer runs."
        : "No shadow report yet: no process has written a summary of its shadow traffic (requests to the served name are sampled at the shadow fraction).";
    fill(el, h("p", { class: "empty" }, why));
    return;
  }
  const latency = shadow.latency_ms || {};
  fill(
    el,
    facts([
      ["fraction", percent(shadow.fraction), "shadow-fraction-value"],
      ["latency p50", latencyPair(latency.live_p50, latency.staged_p50), "shadow-latency-p50"],
      ["latency p99", latencyPair(latency.live_p99, latency.staged_p99), "shadow-latency-p99"],
      ["errors", count(shadow.errors), "shadow-errors"],
      ["mean cosine", score(shadow.mean_cosine, "— (the dimensions differ)"), "shadow-mean-cosine"],
      ["neighbour overlap@10", score(shadow.neighbour_overlap_at_10, "— (fewer than 11 pairs)"), "shadow-overlap"],
      ["requests", count(shadow.requests), "shadow-requests"],
      ["inputs", count(shadow.inputs), "shadow-inputs"],
      ["dropped inputs", count(shadow.dropped), "shadow-dropped"],
      ["window", `${count(shadow.window)} pairs per process`],
      ["processes", count(shadow.processes), "shadow-processes"],
    ]),
  );
}

function renderAdapter(el, adapter, thresholds) {
  const bounds = thresholds || {};
  const mark = (value, bound) => (typeof bound !== "number" ? "" : meets(value, bound) ? "meets" : "below");
  const rows = [
    ["mean cosine", adapter?.mean_cosine, bounds.adapter_mean_cosine],
    ["neighbour overlap@10", adapter?.neighbour_overlap_at_10, bounds.adapter_neighbour_overlap_at_10],
  ];
  const measures = h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "adapter thresholds" },
    h(
      "table",
      { "data-testid": "adapter-thresholds" },
      h("caption", { class: "muted" }, "Held-out measures after the adapter, and what an adapted promotion asks"),
      h("thead", {}, h("tr", {}, ["measure", "value", "threshold", "verdict"].map((heading) => h("th", { scope: "col" }, heading)))),
      h(
        "tbody",
        {},
        rows.map(([label, value, bound]) =>
          h(
            "tr",
            {},
            h("td", {}, label),
            h("td", {}, adapter ? score(value) : "—"),
            h("td", {}, typeof bound === "number" ? `≥ ${number(bound, 2)}` : "—"),
            h("td", {}, adapter && mark(value, bound) ? h("span", { class: `badge ${mark(value, bound) === "meets" ? "ok" : "bad"}` }, mark(value, bound)) : ""),
          ),
        ),
      ),
    ),
  );
  if (!adapter) {
    fill(el, h("p", { class: "empty" }, `No adapter fitted for this staged revision yet: a fit needs at least ${MIN_PAIRS} pairs, from the sample texts and the shadow traffic.`), measures);
    return;
  }
  fill(
    el,
    facts([
      ["kind", adapter.kind, "adapter-kind"],
      ["pairs", count(adapter.pairs), "adapter-pairs"],
      ["held out", count(adapter.held_out)],
      ["fitted at", when(adapter.fitted_at)],
    ]),
    measures,
  );
}
