// A task (`#/tasks/<kind>/<id>`): its steps as they run (polled every 2 s until the task has
// ended), each step's status, duration and message, the compatibility gate's figures, the
// failure sentence; cancel while it has not ended (the server cancels only a pending one).

import { ApiError, get, post } from "../api.js";
import { fill, h, section, table } from "../dom.js";
import { between, duration, number, when } from "../format.js";
import { actionButton, badge, confirmAction, notice, show } from "../ui.js";
import { deploymentHash, FINAL_STATUSES, shortId, sleep, splitServedName, TASK_KINDS, taskHash, taskPath } from "./common.js";

const POLL_MS = 2000;
// The server answers a submission before its session commits: a task just submitted may be
// 404 for a moment (greenroom.cli.follow waits as long).
const SUBMITTED_VISIBLE_MS = 5000;

// A deploy's gate step, and a promotion's (docs/api/migrations.md).
const GATE_STEPS = ["compatibility_gate", "gate"];

const KIND_NAMES = { deploy: "Deploy", delete: "Delete", promote: "Promote", finish: "Finish", abort: "Abort" };

export const page = {
  pattern: /^\/tasks\/(?<kind>[^/]+)\/(?<id>[^/]+)$/,
  title: ({ id }) => `Task ${id}`,
  async render(main, { kind, id }, ctx) {
    const found = await find(kind, id, ctx.signal);
    const state = { kind: found.kind, id, task: found.task };
    if (found.kind !== kind) history.replaceState(null, "", taskHash(found.task, found.kind));

    const views = {
      facts: h("div", {}),
      steps: h("div", {}),
      gate: h("div", { "data-testid": "gate-result" }),
      detail: h("div", {}),
      actions: h("div", { class: "actions" }),
      notice: notice("task-notice"),
      refresh: notice("task-refresh-notice"),
    };
    views.gateSection = section("Compatibility gate", views.gate);
    state.views = views;
    fill(
      main,
      h(
        "div",
        { "data-testid": "task-page" },
        h("h1", {}, `${KIND_NAMES[state.kind] || state.kind} task `, h("span", { class: "mono" }, id)),
        views.detail,
        section("Task", views.facts, views.actions, views.notice),
        section("Steps", views.steps),
        views.gateSection,
        views.refresh,
      ),
    );
    draw(state, ctx);

    ctx.every(POLL_MS, async () => {
      if (FINAL_STATUSES.includes(state.task.status)) {
        // Ended: nothing changes any more; a running duration no longer ticks.
        return;
      }
      try {
        state.task = await get(taskPath(state.kind, id), { signal: ctx.signal });
      } catch (error) {
        if (error.name === "AbortError") throw error;
        show(views.refresh, `The last refresh failed: ${error.message}`, "error");
        return;
      }
      fill(views.refresh, "");
      draw(state, ctx);
    });
  },
};

/** The task and its kind: the URL's kind first (retried while a task just submitted becomes
 * visible), then the other kinds (a client may have chosen an id without a kind's prefix). */
async function find(kind, id, signal) {
  const kinds = TASK_KINDS.includes(kind) ? [kind, ...TASK_KINDS.filter((k) => k !== kind)] : [...TASK_KINDS];
  const visibleBy = Date.now() + SUBMITTED_VISIBLE_MS;
  let firstMissing = null;
  for (;;) {
    try {
      return { kind: kinds[0], task: await get(taskPath(kinds[0], id), { signal }) };
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
      firstMissing = error;
    }
    if (Date.now() > visibleBy) break;
    await sleep(400, signal);
  }
  for (const other of kinds.slice(1)) {
    try {
      return { kind: other, task: await get(taskPath(other, id), { signal }) };
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
  }
  throw firstMissing;
}

function draw(state, ctx) {
  const { task, views } = state;
  const meta = task.metadata || {};
  const [workspace, name] = splitServedName(task.embedding_model_id);
  fill(
    views.facts,
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Status"),
      h("dd", {}, badge(task.status, "task-status"), meta.result && meta.result !== task.status ? [" ", h("span", { "data-testid": "task-result" }, resultText(meta.result))] : null),
      h("dt", {}, "Served name"),
      h("dd", {}, h("a", { href: deploymentHash(workspace, name), "data-testid": "task-deployment-link" }, task.embedding_model_id)),
      pair("Created", when(task.created_at)),
      pair("Updated", when(task.updated_at)),
      pair("Took", FINAL_STATUSES.includes(task.status) ? duration(between(task.created_at, task.updated_at)) : `${duration(sinceNow(task.created_at))} so far`),
      pair("Started by", meta.initiated_by),
      meta.strategy ? pair("Strategy", meta.strategy) : null,
      meta.mode ? pair("Mode", meta.mode) : null,
      meta.config ? pair("Config", meta.config_version ? `${meta.config} v${meta.config_version}` : meta.config) : null,
      meta.rollback_of ? pair("Rolls back to", meta.rollback_of, true) : null,
      meta.revision_id ? pair(state.kind === "delete" ? "Revision withdrawn" : "New revision", meta.revision_id, true) : null,
      meta.previous_revision_id ? pair("Previous revision", meta.previous_revision_id, true) : null,
      meta.reason ? pair("Reason", meta.reason) : null,
      meta.deployment_target ? pair("Runtime", meta.deployment_target) : null,
    ),
  );
  fill(views.detail, task.detail ? h("p", { class: "error card", role: "alert", "data-testid": "task-detail" }, task.detail) : null);
  fill(views.steps, stepsTable(meta.steps || [], FINAL_STATUSES.includes(task.status)));
  fill(views.gate, gate(meta));
  // Deletes, finishes and aborts have no gate: the section is left out for them.
  views.gateSection.hidden = !meta.compatibility && !meta.adapter_id && !(meta.steps || []).some((s) => GATE_STEPS.includes(s.name));
  const cancellable = ["pending", "processing"].includes(task.status);
  if (cancellable !== state.cancelShown) {
    // Made once (not at every poll), so that a focused button keeps its focus.
    fill(views.actions, cancellable ? cancelButton(state, ctx) : null);
    state.cancelShown = cancellable;
  }
}

/** Seconds from `iso` to now (never below 0: this clock may be behind the server's). */
function sinceNow(iso, now = new Date().toISOString()) {
  return Math.max(0, between(iso, now));
}

function pair(term, value, mono = false) {
  return [h("dt", {}, term), h("dd", { class: mono ? "mono" : null }, value ?? "—")];
}

function resultText(result) {
  return { rolled_out: "rolled out: the new revision serves", unchanged: "unchanged: that revision was already live", staged: "staged: beside the live one, no live traffic" }[result] || result;
}

function stepsTable(steps, ended) {
  const now = new Date().toISOString();
  return table(
    [
      ["Step", (s) => h("span", { class: "mono" }, s.name)],
      ["Status", (s) => h("span", { "data-testid": "step-status" }, badge(s.status))],
      ["Duration", (s) => h("span", { "data-testid": "step-duration" }, stepDuration(s, now))],
      ["Message", (s) => h("span", { "data-testid": "step-message" }, s.message || "")],
    ],
    steps,
    {
      testid: "steps-table",
      rowAttrs: (s) => ({ "data-testid": "step-row", "data-step": s.name, "data-status": s.status }),
      empty: ended ? "No steps: the task ended before a worker started it." : "No steps recorded yet: the task waits for a worker.",
    },
  );
}

function stepDuration(step, now) {
  if (step.duration_ms !== null && step.duration_ms !== undefined) return duration(step.duration_ms / 1000);
  if (step.status === "running" && step.started_at) return `${duration(sinceNow(step.started_at, now))} so far`;
  return "—";
}

/** The compatibility gate: the mean cosine of paired probe vectors against its threshold. */
function gate(meta) {
  const figures = meta.compatibility;
  const step = (meta.steps || []).find((s) => GATE_STEPS.includes(s.name));
  if (figures && typeof figures === "object") {
    const passed = typeof figures.mean_cosine === "number" && typeof figures.threshold === "number" && figures.mean_cosine >= figures.threshold;
    let verdict;
    if (passed) verdict = "passed: the new vectors are comparable with the live ones";
    else if (step && step.status === "failed") verdict = "failed: the new vectors are not comparable with the live ones; the live revision serves on";
    else if (meta.allow_embedding_space_change) verdict = "below the threshold, allowed by the request: indexes must be re-built";
    else verdict = "below the threshold: the new vectors are not comparable with the live ones";
    return [
      h(
        "dl",
        { class: "facts" },
        pair("Mean cosine", typeof figures.mean_cosine === "number" ? number(figures.mean_cosine, 4) : "none: the dimensions differ"),
        pair("Threshold", typeof figures.threshold === "number" ? number(figures.threshold, 4) : "—"),
        pair("Re-index required", figures.reindex_required ? "yes" : "no"),
        pair("Verdict", verdict),
      ),
      step && step.message ? h("p", { class: "muted" }, step.message) : null,
    ];
  }
  if (meta.adapter_id) return h("p", {}, `Adapted promotion through adapter ${shortId(meta.adapter_id, 12)}`, step && step.message ? `: ${step.message}` : "");
  if (step && step.message) return h("p", {}, `${step.status}: ${step.message}`);
  if (step) return h("p", { class: "muted" }, `Not measured yet (${step.status}).`);
  return h("p", { class: "muted" }, "This task has no compatibility gate.");
}

function cancelButton(state, ctx) {
  return actionButton(
    "Cancel",
    "deploy",
    async () => {
      const { task } = state;
      const text =
        task.status === "pending"
          ? `Cancel ${task.id}: it never runs, and nothing of ${task.embedding_model_id} changes.`
          : `Cancel ${task.id}: only a task no worker has started can be canceled; this one is running, so the server will most likely refuse and say why.`;
      if (!(await confirmAction(`Cancel ${task.id}?`, text, { confirmLabel: "Cancel the task", danger: true }))) return;
      state.task = await post(`${taskPath(state.kind, task.id)}/cancel`);
      show(state.views.notice, `${state.task.id} is ${state.task.status}.`, "info");
      draw(state, ctx);
    },
    { testid: "cancel-button", danger: true, notice: state.views.notice },
  );
}
