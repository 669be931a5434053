// A deployment (`#/deployments/<workspace>/<name>`): the live pointer, versions with their
// status history, revisions (workloads API) with a rollback each, the name's tasks; deploy with
// `key=value` overrides (as `greenroom deploy --set`), roll back, delete. Refreshed every 10 s;
// the forms are built once, so a refresh never loses what is being typed.

import { ApiError, get, post, query } from "../api.js";
import { fill, h, section, table } from "../dom.js";
import { when } from "../format.js";
import { actionButton, badge, confirmAction, notice } from "../ui.js";
import {
  describeOverrides,
  migrationHash,
  parseOverrides,
  servedName,
  shortId,
  taskHash,
  taskKind,
  TASKS_API,
} from "./common.js";

const REFRESH_MS = 10000;
const TASKS_SHOWN = 50;
const STAGED_MESSAGE = "staged: no live traffic";

export const page = {
  pattern: /^\/deployments\/(?<workspace>[^/]+)\/(?<name>[^/]+)$/,
  title: ({ workspace, name }) => `Deployment ${servedName(workspace, name)}`,
  async render(main, { workspace, name }, ctx) {
    const served = servedName(workspace, name);
    const state = { workspace, name, served, data: null, openHistory: new Set(), configs: new Map() };
    state.data = await load(state, ctx.signal);

    const live = h("div", {});
    const versions = h("div", {});
    const revisions = h("div", {});
    const tasks = h("div", {});
    const refreshNotice = notice("deployment-refresh-notice");
    const rollbackNotice = notice("rollback-notice");
    const allowRollbackChange = h("input", { type: "checkbox", id: "rollback-allow-space-change", "data-testid": "rollback-allow-space-change" });
    state.views = { live, versions, revisions, tasks, rollbackNotice, allowRollbackChange };

    fill(
      main,
      h(
        "div",
        { "data-testid": "deployment-page" },
        h("h1", {}, served),
        h("p", { class: "muted" }, `Workspace ${workspace}, name ${name}. `, h("a", { href: migrationHash(workspace, name), "data-testid": "migration-link" }, "Its embedding migration"), " · ", h("a", { href: "#/" }, "Overview")),
        section("Live", live),
        deployForm(state, ctx),
        section("Versions", h("p", { class: "muted" }, "Newest first: each deployment version's status, message and the history of both."), versions),
        section(
          "Revisions",
          h("p", { class: "muted" }, "Each revision is a snapshot of what ran. A rollback brings an earlier one back as a new revision, through a green rollout."),
          h("label", {}, allowRollbackChange, " Allow a rollback whose vectors differ from the live ones (indexes must then be re-built)"),
          revisions,
          rollbackNotice,
        ),
        section("Tasks", tasks),
        deleteForm(state, ctx),
        refreshNotice,
      ),
    );
    draw(state, ctx);

    ctx.every(REFRESH_MS, async () => {
      try {
        state.data = await load(state, ctx.signal);
        draw(state, ctx);
        fill(refreshNotice, "");
      } catch (error) {
        if (error.name === "AbortError") throw error;
        refreshNotice.className = "notice error";
        fill(refreshNotice, `The last refresh failed: ${error.message}`);
      }
    });
  },
};

const orNull = (promise) =>
  promise.catch((error) => {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  });

/** What the page shows, read from the deployments, workloads, tasks and registry APIs. */
async function load(state, signal) {
  const { workspace, name, served } = state;
  const base = `/apis/models/v2/workspaces/${encodeURIComponent(workspace)}`;
  const [deployment, versions, tasks] = await Promise.all([
    orNull(get(`${base}/deployments/${encodeURIComponent(name)}`, { signal })),
    get(`${base}/deployments/${encodeURIComponent(name)}/versions`, { signal }),
    get(`${TASKS_API}/tasks${query({ embedding_model_id: served, limit: TASKS_SHOWN })}`, { signal }),
  ]);
  const revisions = deployment
    ? (await get(`/api/v1/workloads/inferences/${encodeURIComponent(deployment.id)}/revisions`, { signal })).revisions
    : [];
  // The model: the one the deployed config version names; before any deploy, the latest config's.
  const configPath = deployment
    ? `${base}/deployment-configs/${encodeURIComponent(deployment.config)}/versions/${encodeURIComponent(deployment.config_version)}`
    : `${base}/deployment-configs/${encodeURIComponent(name)}`;
  let config = state.configs.get(configPath);
  if (config === undefined) {
    config = await orNull(get(configPath, { signal }));
    if (deployment) state.configs.set(configPath, config); // a version never changes
  }
  const modelId = (config && config.model_spec && config.model_spec.model_name) || (workspace === "default" ? name : null);
  const model = modelId ? await orNull(get(`/v1/embedding-models/${encodeURIComponent(modelId)}`, { signal })) : null;
  if (!deployment && !versions.length && !model && !config && !tasks.length) {
    throw new ApiError(404, `Deployment '${workspace}/${name}' not found, and no embedding model or deployment config is named so.`);
  }
  return { deployment, versions, tasks, revisions: [...revisions].reverse(), config, modelId, model };
}

function draw(state, ctx) {
  const { live, versions, revisions, tasks } = state.views;
  fill(live, liveFacts(state));
  fill(versions, versionsTable(state));
  fill(revisions, revisionsTable(state, ctx));
  fill(tasks, tasksTable(state));
}

function liveFacts(state) {
  const { deployment, config, modelId, model } = state.data;
  const liveId = deployment && deployment.live_revision_id;
  const staged = deployment && deployment.revision_id !== deployment.live_revision_id && deployment.status_message === STAGED_MESSAGE ? deployment.revision_id : null;
  return h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Live revision"),
    h("dd", { class: "mono", "data-testid": "live-revision" }, liveId || (deployment ? "none: nothing is live" : "not deployed yet")),
    staged ? [h("dt", {}, "Staged revision"), h("dd", { class: "mono", "data-testid": "staged-revision" }, staged)] : null,
    h("dt", {}, "Previous revision"),
    h("dd", { class: "mono" }, (deployment && deployment.previous_revision_id) || "—"),
    h("dt", {}, "Status"),
    h("dd", {}, deployment ? [badge(deployment.status, "deployment-status"), " ", deployment.status_message || ""] : "—"),
    h("dt", {}, "Version"),
    h("dd", {}, deployment ? `${deployment.entity_version} (config ${deployment.config} v${deployment.config_version})` : config ? `none yet (config ${config.name} v${config.entity_version})` : "—"),
    h("dt", {}, "Endpoint"),
    h("dd", { class: "mono" }, deployment && deployment.endpoint ? `${deployment.endpoint.url} model=${deployment.endpoint.model}` : "—"),
    h("dt", {}, "Embedding model"),
    h("dd", { class: "mono" }, modelId || "—", model ? ` (${model.dimension} dimensions, ${model.pooling} pooling${model.normalize ? ", normalised" : ""})` : ""),
    h("dt", {}, "Description"),
    h("dd", { "data-testid": "model-description" }, (model && model.description) || ""),
  );
}

function versionsTable(state) {
  const { versions, deployment } = state.data;
  return table(
    [
      ["Version", (v) => String(v.entity_version)],
      ["Status", (v) => badge(v.status, "version-status")],
      ["Message", (v) => h("span", { "data-testid": "version-message" }, v.status_message || "")],
      ["Revision", (v) => h("span", { class: "mono", title: v.revision_id }, shortId(v.revision_id), deployment && v.revision_id === deployment.live_revision_id ? [" ", badge("live")] : null)],
      ["Config", (v) => `${v.config} v${v.config_version}`],
      ["Updated", (v) => when(v.updated_at)],
      ["History", (v) => history(state, v)],
    ],
    versions,
    {
      testid: "versions-table",
      rowAttrs: (v) => ({ "data-testid": "version-row", "data-version": String(v.entity_version) }),
      empty: "No deployment versions yet: deploy to make the first.",
    },
  );
}

function history(state, version) {
  const entries = version.status_history || [];
  const key = String(version.entity_version);
  const details = h(
    "details",
    { "data-testid": "version-history", open: state.openHistory.has(key) },
    h("summary", {}, `${entries.length} change${entries.length === 1 ? "" : "s"}`),
    h(
      "ol",
      { class: "history" },
      entries.map((entry) => h("li", {}, h("span", { class: "muted" }, when(entry.timestamp)), " ", badge(entry.status), " ", entry.status_message || "")),
    ),
  );
  details.addEventListener("toggle", () => {
    if (details.open) state.openHistory.add(key);
    else state.openHistory.delete(key);
  });
  return details;
}

function revisionsTable(state, ctx) {
  const { revisions, deployment } = state.data;
  const liveId = deployment && deployment.live_revision_id;
  const { rollbackNotice, allowRollbackChange } = state.views;
  return table(
    [
      [
        "Revision",
        (r) =>
          h(
            "span",
            {},
            h("span", { class: "mono", title: r.id }, shortId(r.id)),
            r.id === liveId ? [" ", badge("live", "revision-live")] : null,
            r.id !== liveId && !r.deletedAt && r.phaseMessage === STAGED_MESSAGE ? [" ", badge("staged", "revision-staged")] : null,
          ),
      ],
      ["Phase", (r) => badge(r.phase, "revision-phase")],
      ["Phase message", (r) => h("span", { "data-testid": "revision-phase-message" }, r.phaseMessage || "")],
      ["Replicas", (r) => `${r.runningPods ?? 0}/${(r.requestedPods && r.requestedPods.number) ?? "?"}`],
      ["Created", (r) => when(r.createdAt)],
      ["Deleted at", (r) => h("span", { "data-testid": "revision-deleted-at" }, r.deletedAt ? when(r.deletedAt) : "—")],
      [
        "Roll back",
        (r) =>
          r.id === liveId
            ? h("span", { class: "muted" }, "serving")
            : actionButton(
                "Roll back",
                "deploy",
                async () => {
                  const allow = allowRollbackChange.checked;
                  const text =
                    `Roll ${state.served} back to revision ${r.id}: its snapshot comes back as a new revision ` +
                    (liveId ? `beside the live one (${shortId(liveId)}) and takes all traffic once it is healthy; the live one then drains and stops.` : "and takes traffic once it is healthy.") +
                    (allow ? " Its vectors may differ from the live ones: indexes built from them must be re-built." : " It fails, leaving the live one serving, if its vectors are not comparable with the live ones.");
                  if (!(await confirmAction(`Roll back ${state.served}?`, text, { confirmLabel: "Roll back" }))) return;
                  const body = { embedding_model_id: state.served, revision_id: r.id };
                  if (allow) body.allow_embedding_space_change = true;
                  const task = await post(`${TASKS_API}/rollback`, body);
                  ctx.navigate(taskHash(task, "deploy"));
                },
                { testid: "rollback-button", notice: rollbackNotice },
              ),
      ],
    ],
    revisions,
    {
      testid: "revisions-table",
      rowAttrs: (r) => ({ "data-testid": "revision-row", "data-revision-id": r.id }),
      empty: "No revisions yet.",
    },
  );
}

function tasksTable(state) {
  return table(
    [
      ["Task", (t) => h("a", { href: taskHash(t), class: "mono" }, t.id)],
      ["Kind", (t) => taskKind(t)],
      ["Status", (t) => badge(t.status, "task-row-status")],
      ["Created", (t) => when(t.created_at)],
      ["By", (t) => (t.metadata && t.metadata.initiated_by) || "—"],
      ["Detail", (t) => t.detail || (t.metadata && t.metadata.result) || ""],
    ],
    state.data.tasks,
    {
      testid: "tasks-table",
      rowAttrs: (t) => ({ "data-testid": "task-row", "data-task-id": t.id }),
      empty: "No tasks for this name yet.",
    },
  );
}

function deployForm(state, ctx) {
  const overrides = h("textarea", {
    id: "deploy-overrides",
    "data-testid": "deploy-overrides",
    rows: 4,
    spellcheck: "false",
    placeholder: "max_batch_size=16\nreplicas=2",
    "aria-describedby": "deploy-overrides-help",
  });
  const strategy = h(
    "select",
    { id: "deploy-strategy", "data-testid": "deploy-strategy" },
    h("option", { value: "green" }, "green: take all traffic once healthy"),
    h("option", { value: "staged" }, "staged: beside the live one, no live traffic (a migration)"),
  );
  const allow = h("input", { type: "checkbox", id: "deploy-allow-space-change", "data-testid": "deploy-allow-space-change" });
  const where = notice("deploy-notice");
  const button = actionButton(
    "Deploy",
    "deploy",
    async () => {
      const config = parseOverrides(overrides.value);
      const staged = strategy.value === "staged";
      const text = deploySentence(state, config, staged, allow.checked);
      if (!(await confirmAction(`${staged ? "Stage" : "Deploy"} ${state.served}?`, text, { confirmLabel: staged ? "Stage" : "Deploy" }))) return;
      const body = { embedding_model_id: state.served };
      if (Object.keys(config).length) body.config = config;
      if (staged) body.strategy = "staged";
      if (allow.checked) body.allow_embedding_space_change = true;
      const task = await post(`${TASKS_API}/deploy`, body);
      ctx.navigate(taskHash(task, "deploy"));
    },
    { testid: "deploy-button", primary: true, notice: where },
  );
  return section(
    "Deploy",
    h("label", { for: "deploy-overrides" }, "Config overrides, one key=value a line (as greenroom deploy --set)"),
    overrides,
    h(
      "p",
      { class: "muted", id: "deploy-overrides-help" },
      "Keys: engine, quantization, replicas, max_batch_size, max_batch_tokens, max_queue, threads, runtime. A key left out keeps the config's value; key=null sets it back to its default. They are stored as a new config version when the task runs.",
    ),
    h("label", { for: "deploy-strategy" }, "Strategy"),
    strategy,
    h("label", {}, allow, " Allow vectors that are not comparable with the live ones (indexes must then be re-built)"),
    h("div", { class: "actions" }, button),
    where,
  );
}

function deploySentence(state, config, staged, allowChange) {
  const { deployment } = state.data;
  const liveId = deployment && deployment.live_revision_id;
  const keys = Object.keys(config).length;
  const withWhat = keys ? `with ${describeOverrides(config)}` : "with its latest config";
  let text;
  if (staged) {
    text = `Stage ${state.served} ${withWhat}: a new revision starts beside the live one without live traffic, as the staged revision of an embedding migration; the live one keeps serving every request.`;
  } else if (liveId) {
    text = `Deploy ${state.served} ${withWhat}: a new revision starts beside the live one and takes all traffic once it is healthy; the live one then drains and stops.`;
    if (!keys) text += " If that config is already live and healthy, nothing changes.";
  } else {
    text = `Deploy ${state.served} ${withWhat}: its first revision starts and takes traffic once it is healthy.`;
  }
  if (allowChange) text += " Its vectors may differ from the live ones: indexes built from them must be re-built.";
  return text;
}

function deleteForm(state, ctx) {
  const reason = h("input", { id: "delete-reason", "data-testid": "delete-reason", type: "text", maxlength: 1000, autocomplete: "off" });
  const where = notice("delete-notice");
  const button = actionButton(
    "Delete",
    "deploy",
    async () => {
      const text = `Delete ${state.served}: requests for ${state.served} get 404 from now on, its replicas (and a staged revision's, if any) drain and stop, and the deployment is marked DELETED. The embedding model stays registered: a later deploy brings it back.`;
      if (!(await confirmAction(`Delete ${state.served}?`, text, { confirmLabel: "Delete", danger: true }))) return;
      const task = await post(`${TASKS_API}/delete`, { embedding_model_id: state.served, reason: reason.value.trim() || null });
      ctx.navigate(taskHash(task, "delete"));
    },
    { testid: "delete-button", danger: true, notice: where },
  );
  return section(
    "Delete",
    h("p", { class: "muted" }, "Withdraw the served name: its requests get 404, its replicas stop."),
    h("label", { for: "delete-reason" }, "Reason (optional, kept in the task)"),
    reason,
    h("div", { class: "actions" }, button),
    where,
  );
}
