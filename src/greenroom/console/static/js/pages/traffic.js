// Traffic of the last hour, per served name and revision, from `GET /v1/traffic` (10-s buckets
// kept by every API process and merged by the server): requests and errors, p50/p99 latency,
// and latency and batch-size histograms summed over the hour.

import { ApiError, get } from "../api.js";
import { histogram, lineChart } from "../charts.js";
import { facts, fill, h } from "../dom.js";
import { ms, number, percent } from "../format.js";

const REFRESH_MS = 10000;

/** Bucket labels of upper bounds: `≤1`, `≤2`, …, and `>last` for the overflow bucket. */
export function bucketLabels(bounds, unit = "") {
  return [...bounds.map((bound) => `≤${bound}${unit}`), `>${bounds[bounds.length - 1]}${unit}`];
}

/** Counts per bucket summed over the points (`key`: latency_counts or batch_counts). */
export function summed(points, key, buckets) {
  const total = new Array(buckets).fill(0);
  for (const point of points) {
    const counts = point[key] || [];
    for (let i = 0; i < buckets && i < counts.length; i++) total[i] += counts[i] || 0;
  }
  return total;
}

/** The window's 10-s grid (bucket starts, ascending), with each point at its place: counts are
 * 0 where a bucket held nothing, latencies null (no requests, no latency). */
export function onGrid(points, { now, window_s: windowS, resolution_s: step }) {
  const last = Math.floor(now / step) * step;
  const first = last - Math.ceil(windowS / step) * step + step;
  const xs = [];
  for (let t = first; t <= last; t += step) xs.push(t);
  const at = new Map(points.map((p) => [p.t, p]));
  const pick = (key, empty) => xs.map((t) => (at.has(t) ? (at.get(t)[key] ?? empty) : empty));
  return {
    xs,
    requests: pick("requests", 0),
    errors: pick("errors", 0),
    p50: pick("p50_ms", null),
    p99: pick("p99_ms", null),
  };
}

export const page = {
  pattern: /^\/traffic$/,
  title: () => "Traffic",
  async render(main, _params, ctx) {
    const status = h("p", { class: "muted", role: "status", "data-testid": "traffic-status" });
    const list = h("div", { "data-testid": "traffic-series-list" });
    const charts = [];
    const destroyCharts = () => {
      for (const chart of charts.splice(0)) chart.destroy();
    };
    ctx.signal.addEventListener("abort", destroyCharts);

    const load = async () => {
      try {
        return await get("/v1/traffic", { signal: ctx.signal });
      } catch (error) {
        if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
          error.unavailable = true;
        }
        throw error;
      }
    };
    const draw = (traffic) => {
      destroyCharts();
      const series = [...(traffic.series || [])].sort(
        (a, b) => a.served_name.localeCompare(b.served_name) || String(a.revision_id).localeCompare(String(b.revision_id)),
      );
      const processes = traffic.processes ?? 0;
      fill(
        status,
        `The last ${Math.round(traffic.window_s / 60)} minutes at ${traffic.resolution_s}-s resolution, merged from ${processes} API process${processes === 1 ? "" : "es"}; updated ${new Date().toLocaleTimeString()}, every ${REFRESH_MS / 1000} s.`,
      );
      if (!series.length) {
        fill(list, h("p", { class: "empty", "data-testid": "traffic-empty" }, "No traffic in the last hour."));
        return;
      }
      const cards = series.map((one) => card(one, traffic));
      fill(list, cards.map((c) => c.el));
      for (const c of cards) charts.push(...c.draw());
    };

    fill(main, h("div", { "data-testid": "traffic-page" }, h("h1", {}, "Traffic"), status, list));
    try {
      draw(await load());
    } catch (error) {
      if (!error.unavailable) throw error;
      fill(list, h("p", { class: "empty", "data-testid": "traffic-unavailable" }, "This server has no traffic API (GET /v1/traffic): upgrade greenroom to see traffic here, or read the same figures on /metrics."));
      return;
    }
    ctx.every(REFRESH_MS, async () => {
      try {
        draw(await load());
      } catch (error) {
        if (error.name === "AbortError") throw error;
        status.className = "error";
        fill(status, `Refresh failed: ${error.message} Showing the last answer.`);
        return;
      }
      status.className = "muted";
    });
  },
};

function card(series, traffic) {
  const points = series.points || [];
  const latencyBounds = traffic.latency_bounds_ms || [];
  const batchBounds = traffic.batch_size_bounds || [];
  const requests = points.reduce((sum, p) => sum + (p.requests || 0), 0);
  const errors = points.reduce((sum, p) => sum + (p.errors || 0), 0);
  const inputs = points.reduce((sum, p) => sum + (p.inputs || 0), 0);
  const latencySum = points.reduce((sum, p) => sum + (p.latency_sum_ms || 0), 0);
  const batches = points.reduce((sum, p) => sum + (p.batches || 0), 0);
  const queueMax = points.reduce((most, p) => Math.max(most, p.queue_depth_max || 0), 0);
  const grid = onGrid(points, traffic);
  const requestsEl = h("div", { class: "chart", "data-testid": "traffic-requests-chart" });
  const latencyEl = h("div", { class: "chart", "data-testid": "traffic-latency-chart" });
  const latencyHistEl = h("div", { class: "chart", "data-testid": "traffic-latency-histogram" });
  const batchHistEl = h("div", { class: "chart", "data-testid": "traffic-batch-histogram" });
  const chartGrid = h("div", { class: "grid" }, requestsEl, latencyEl, latencyHistEl, batchHistEl);
  // two charts a row on a wide screen, one on a phone
  chartGrid.style.gridTemplateColumns = "repeat(auto-fit, minmax(max(300px, calc(50% - 16px)), 1fr))";
  const el = h(
    "section",
    { class: "card", "data-testid": "traffic-series", "data-name": series.served_name, "data-revision-id": series.revision_id },
    h("h2", {}, h("span", { class: "mono" }, series.served_name), " · revision ", h("span", { class: "mono" }, series.revision_id)),
    facts([
      ["requests", `${requests.toLocaleString()} (${number(requests / Math.max(1, traffic.window_s), 2)}/s)`, "traffic-requests"],
      ["errors", `${errors.toLocaleString()} (${requests ? percent(errors / requests) : "—"})`, "traffic-errors"],
      ["inputs", inputs.toLocaleString()],
      ["mean latency", requests ? ms(latencySum / requests) : "—"],
      ["batches", batches.toLocaleString()],
      ["queue depth, most (inputs waiting)", queueMax.toLocaleString()],
    ]),
    chartGrid,
  );
  const step = traffic.resolution_s;
  return {
    el,
    draw: () => [
      lineChart(
        requestsEl,
        grid.xs,
        [
          { label: `requests / ${step} s`, values: grid.requests },
          { label: `errors / ${step} s`, values: grid.errors },
        ],
        { title: `Requests and errors per ${step} s` },
      ),
      lineChart(
        latencyEl,
        grid.xs,
        [
          { label: "p50", values: grid.p50 },
          { label: "p99", values: grid.p99 },
        ],
        { title: "Latency p50 / p99 in ms" },
      ),
      histogram(latencyHistEl, bucketLabels(latencyBounds), summed(points, "latency_counts", latencyBounds.length + 1), { title: "Latency in ms over the hour (requests per bucket)" }),
      histogram(batchHistEl, bucketLabels(batchBounds), summed(points, "batch_counts", batchBounds.length + 1), { title: "Batch size over the hour (batches per bucket)" }),
    ],
  };
}
