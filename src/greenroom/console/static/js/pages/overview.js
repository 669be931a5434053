// The overview (`#/`): every served name with its live revision, embedding space, replicas,
// the last 15 minutes of traffic (sparklines) and its latest task. Refreshed every 10 s.
//
// The calls, per refresh: the registry's models, one page of deployments per workspace (the
// latest version of each name, with its live pointer), the recent tasks, the traffic of the
// last 15 minutes, and the live revision of each name (workloads API: replicas ready and
// wanted, its weights). A config version never changes: each is read once per visit.

import { get, query } from "../api.js";
import { sparkline } from "../charts.js";
import { fill, h, table } from "../dom.js";
import { ms, number, percent } from "../format.js";
import { badge, notice, show } from "../ui.js";
import {
  addCounts,
  deploymentHash,
  embeddingSpace,
  histogramQuantile,
  revisionHash,
  servedName,
  shortId,
  splitServedName,
  taskHash,
  TASKS_API,
} from "./common.js";

const WINDOW_S = 900;
const REFRESH_MS = 10000;
const RECENT_TASKS = 200;
const LATEST_TASK_TTL_MS = 60000;

export const page = {
  pattern: /^\/$/,
  title: () => "Overview",
  async render(main, params, ctx) {
    const state = { workspaces: new Set(["default"]), configs: new Map(), latestTasks: new Map(), charts: [] };
    const body = h("div", {});
    const status = notice("overview-notice");
    const updated = h("p", { class: "muted", "data-testid": "overview-updated" });
    const load = () => refresh(body, updated, state, ctx.signal);
    await load(); // a first failure is the page's error
    fill(
      main,
      h("h1", {}, "Overview"),
      h(
        "p",
        { class: "muted" },
        "Every served name, its live revision and its traffic over the last 15 minutes: mean requests/s, p50 and p99 latency, error rate and the highest queue depth, each with its 10-s values. Refreshed every 10 s.",
      ),
      body,
      updated,
      status,
    );
    drawCharts(state);
    ctx.every(REFRESH_MS, async () => {
      try {
        await load();
        drawCharts(state);
        if (status.textContent) fill(status, "");
      } catch (error) {
        if (error.name === "AbortError") throw error;
        show(status, `The last refresh failed: ${error.message}`, "error");
      }
    });
  },
};

/** Everything the table shows, read from the APIs; then the table replaces the old one. */
async function refresh(body, updated, state, signal) {
  const [models, tasks, traffic] = await Promise.all([
    get("/v1/embedding-models", { signal }),
    get(`${TASKS_API}/tasks${query({ limit: RECENT_TASKS })}`, { signal }),
    readTraffic(signal),
  ]);
  // Names in other workspaces are seen in the tasks and the traffic: their workspaces are listed.
  for (const task of tasks) state.workspaces.add(splitServedName(task.embedding_model_id)[0]);
  for (const series of (traffic && traffic.series) || []) state.workspaces.add(splitServedName(series.served_name)[0]);
  const deployments = (await Promise.all([...state.workspaces].map((ws) => listDeployments(ws, signal)))).flat();

  const modelsById = new Map(models.map((m) => [m.id, m]));
  const rows = new Map(); // served name → row
  const row = (served) => {
    if (!rows.has(served)) {
      const [workspace, name] = splitServedName(served);
      rows.set(served, { served, workspace, name, deployment: null, revision: null, modelId: workspace === "default" ? name : null, task: null });
    }
    return rows.get(served);
  };
  for (const model of models) row(model.id);
  for (const deployment of deployments) row(servedName(deployment.workspace, deployment.name)).deployment = deployment;
  for (const series of (traffic && traffic.series) || []) row(series.served_name);
  for (const task of tasks) {
    const entry = rows.get(task.embedding_model_id);
    if (entry && !entry.task) entry.task = task; // the list is newest first
  }

  await Promise.all(
    [...rows.values()].map(async (entry) => {
      const { deployment } = entry;
      const jobs = [];
      if (deployment && deployment.live_revision_id) {
        jobs.push(
          get(`/api/v1/workloads/inferences/revisions/${encodeURIComponent(deployment.live_revision_id)}`, { signal })
            .then((revision) => (entry.revision = revision))
            .catch((error) => {
              if (error.name === "AbortError") throw error;
              entry.revisionError = error.message;
            }),
        );
      }
      if (deployment && deployment.config) {
        jobs.push(configModel(state, deployment, signal).then((modelId) => modelId && (entry.modelId = modelId)));
      }
      if (!entry.task && deployment) jobs.push(latestTask(state, entry.served, signal).then((task) => (entry.task = task)));
      await Promise.all(jobs);
    }),
  );

  const byName = trafficByName(traffic);
  const list = [...rows.values()].sort((a, b) => a.served.localeCompare(b.served));
  for (const entry of list) {
    entry.model = entry.modelId ? modelsById.get(entry.modelId) || null : null;
    entry.traffic = traffic ? summarise(traffic, byName.get(entry.served) || []) : null;
  }
  for (const chart of state.charts) chart.destroy();
  state.charts = [];
  state.pending = [];
  fill(body, renderTable(list, state));
  fill(updated, traffic ? `Updated ${new Date().toLocaleTimeString()}.` : `Updated ${new Date().toLocaleTimeString()}; traffic figures are not available from this server (GET /v1/traffic).`);
}

/** The traffic of the last 15 minutes, or null when this server cannot say (the figures show —). */
async function readTraffic(signal) {
  try {
    return await get(`/v1/traffic${query({ window_s: WINDOW_S })}`, { signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return null;
  }
}

async function listDeployments(workspace, signal) {
  const base = `/apis/models/v2/workspaces/${encodeURIComponent(workspace)}/deployments`;
  const all = [];
  for (let pageNo = 1; ; pageNo += 1) {
    const answer = await get(`${base}${query({ page: pageNo, page_size: 1000 })}`, { signal });
    all.push(...answer.data);
    if (pageNo >= (answer.pagination.total_pages || 1)) return all;
  }
}

/** The embedding model a deployment's config version names (read once: a version never changes). */
async function configModel(state, deployment, signal) {
  const key = `${deployment.workspace}/${deployment.config}/${deployment.config_version}`;
  if (!state.configs.has(key)) {
    const path = `/apis/models/v2/workspaces/${encodeURIComponent(deployment.workspace)}/deployment-configs/${encodeURIComponent(deployment.config)}/versions/${encodeURIComponent(deployment.config_version)}`;
    try {
      const config = await get(path, { signal });
      state.configs.set(key, (config.model_spec && config.model_spec.model_name) || null);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      return null; // not kept: asked again next time
    }
  }
  return state.configs.get(key);
}

/** The latest deploy task of a name not among the recent tasks (kept for a minute). */
async function latestTask(state, served, signal) {
  const known = state.latestTasks.get(served);
  if (known && Date.now() - known.at < LATEST_TASK_TTL_MS) return known.task;
  let task = null;
  try {
    task = await get(`${TASKS_API}/deploy-status/${encodeURIComponent(served)}`, { signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
  }
  state.latestTasks.set(served, { at: Date.now(), task });
  return task;
}

function trafficByName(traffic) {
  const byName = new Map();
  for (const series of (traffic && traffic.series) || []) {
    if (!byName.has(series.served_name)) byName.set(series.served_name, []);
    byName.get(series.served_name).push(series);
  }
  return byName;
}

/** One served name's traffic (every revision's merged) over the window: per-10-s values for the
 * sparklines and the window's figures. A bucket with no requests is 0 requests, no latency. */
function summarise(traffic, seriesList) {
  const step = traffic.resolution_s || 10;
  const bounds = traffic.latency_bounds_ms || [];
  const end = Math.floor(traffic.now / step) * step;
  const start = end - (Math.round((traffic.window_s || WINDOW_S) / step) - 1) * step;
  const buckets = new Map();
  for (const series of seriesList) {
    for (const point of series.points || []) {
      if (point.t < start || point.t > end) continue;
      if (!buckets.has(point.t)) buckets.set(point.t, []);
      buckets.get(point.t).push(point);
    }
  }
  const xs = [];
  const values = { rps: [], p50: [], p99: [], errorRate: [], queue: [] };
  let requests = 0;
  let errors = 0;
  let queue = null;
  const window = [];
  for (let t = start; t <= end; t += step) {
    const points = buckets.get(t) || [];
    xs.push(t);
    const n = points.reduce((sum, p) => sum + (p.requests || 0), 0);
    const e = points.reduce((sum, p) => sum + (p.errors || 0), 0);
    const counts = points.reduce((sum, p) => addCounts(sum, p.latency_counts), []);
    addCounts(window, counts);
    requests += n;
    errors += e;
    const depth = points.length ? Math.max(...points.map((p) => p.queue_depth_max || 0)) : 0;
    if (points.length) queue = Math.max(queue ?? 0, depth);
    values.rps.push(n / step);
    values.errorRate.push(n ? e / n : null);
    values.queue.push(depth);
    if (points.length === 1 && points[0].p50_ms !== undefined) {
      values.p50.push(points[0].p50_ms ?? null);
      values.p99.push(points[0].p99_ms ?? null);
    } else {
      values.p50.push(histogramQuantile(bounds, counts, 0.5));
      values.p99.push(histogramQuantile(bounds, counts, 0.99));
    }
  }
  const seconds = xs.length * step;
  return {
    xs,
    values,
    rps: requests / seconds,
    p50: histogramQuantile(bounds, window, 0.5),
    p99: histogramQuantile(bounds, window, 0.99),
    errorRate: requests ? errors / requests : null,
    queue,
    requests,
  };
}

function renderTable(list, state) {
  const spark = (entry, key, text, label, prefix = null) => {
    const cell = h("div", { class: "metric" }, prefix && h("span", { class: "muted" }, prefix), h("span", { "data-testid": `overview-${key}` }, text));
    if (entry.traffic) {
      const chart = h("div", { class: "spark", "data-testid": `overview-${key}-spark` });
      cell.append(h("br"), chart);
      state.pending.push(() => state.charts.push(sparkline(chart, entry.traffic.xs, entry.traffic.values[key], { label: `${entry.served} ${label}` })));
    }
    return cell;
  };
  const traffic = (entry) => entry.traffic || {};
  return table(
    [
      ["Name", (entry) => nameCell(entry)],
      ["Live revision", (entry) => liveCell(entry)],
      ["Embedding space", (entry) => h("span", { class: "mono overview-space", "data-testid": "overview-space" }, spaceOf(entry) ?? "—")],
      ["Replicas", (entry) => h("span", { "data-testid": "overview-replicas" }, replicas(entry))],
      ["Requests/s", (entry) => spark(entry, "rps", entry.traffic ? number(traffic(entry).rps, 2) : "—", "requests per second")],
      // p50 and p99 share a column (one above the other): ten columns fit at 1280 px.
      [
        "Latency p50 · p99",
        (entry) => h("div", {}, spark(entry, "p50", ms(traffic(entry).p50), "p50 latency (ms)", "p50 "), spark(entry, "p99", ms(traffic(entry).p99), "p99 latency (ms)", "p99 ")),
      ],
      ["Error rate", (entry) => spark(entry, "errorRate", entry.traffic ? percent(traffic(entry).errorRate) : "—", "error rate")],
      ["Queue depth", (entry) => spark(entry, "queue", entry.traffic ? number(traffic(entry).queue ?? 0, 0) : "—", "queue depth")],
      ["Latest task", (entry) => taskCell(entry)],
    ],
    list,
    {
      testid: "overview-table",
      rowAttrs: (entry) => ({ "data-testid": "overview-row", "data-name": entry.served }),
      empty: "No served names yet: register a model (greenroom models register) and deploy it.",
    },
  );
}

function drawCharts(state) {
  for (const draw of state.pending || []) draw();
  state.pending = [];
}

function nameCell(entry) {
  const description = entry.model && entry.model.description;
  return h(
    "div",
    { class: "overview-name" },
    h("a", { href: deploymentHash(entry.workspace, entry.name), "data-testid": "overview-link" }, entry.served),
    h("div", { class: "muted overview-description", title: description || null, "data-testid": "overview-description" }, description || ""),
  );
}

function liveCell(entry) {
  const { deployment } = entry;
  if (!deployment) return h("span", { class: "muted", "data-testid": "overview-live" }, "not deployed");
  const live = deployment.live_revision_id;
  return h(
    "div",
    {},
    h("span", { class: "mono", title: live || null, "data-testid": "overview-live" }, live ? shortId(live) : "none"),
    " ",
    badge(deployment.status, "overview-status"),
  );
}

function spaceOf(entry) {
  if (!entry.revision) return null;
  return embeddingSpace(entry.modelId, revisionHash(entry.revision), entry.model);
}

function replicas(entry) {
  if (!entry.revision) return entry.revisionError ? "?" : "—";
  const wanted = entry.revision.requestedPods ? entry.revision.requestedPods.number : null;
  return `${entry.revision.runningPods ?? 0}/${wanted ?? "?"}`;
}

function taskCell(entry) {
  const { task } = entry;
  if (!task) return h("span", { class: "muted" }, "—");
  return h(
    "div",
    {},
    h("a", { href: taskHash(task), class: "mono", title: task.id, "data-testid": "overview-task" }, shortId(task.id, 15)),
    " ",
    badge(task.status, "overview-task-status"),
  );
}
