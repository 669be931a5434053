// Charts, drawn by uPlot (vendored under /ui/vendor/uplot: no CDN). Sizes follow the container.

import uPlot from "../vendor/uplot/uPlot.esm.js";

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";

/** A small line chart without axes for a table cell: `xs` are epoch seconds. */
export function sparkline(el, xs, ys, { label = "value" } = {}) {
  el.replaceChildren();
  el.classList.add("spark");
  el.setAttribute("role", "img");
  const last = ys.length ? ys[ys.length - 1] : null;
  el.setAttribute("aria-label", `${label}: last ${last === null || last === undefined ? "no data" : Number(last).toFixed(2)}`);
  return new uPlot(
    {
      width: 120,
      height: 32,
      pxAlign: false,
      cursor: { show: false },
      legend: { show: false },
      select: { show: false },
      scales: { x: { time: false } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: css("--accent"), width: 1.5, fill: css("--accent-soft"), spanGaps: true }],
    },
    [xs, ys],
    el,
  );
}

/** A time chart with one line per series: `series` is [{label, values}], all over `xs`;
 * `yRange` fixes the y axis ([0, 1] for an overlap). */
export function lineChart(el, xs, series, { title, unit = "", height = 220, yRange } = {}) {
  el.replaceChildren();
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", title || series.map((s) => s.label).join(", "));
  const palette = ["--accent", "--accent-2", "--accent-3", "--accent-4"];
  const width = Math.max(280, Math.min(el.clientWidth || 640, 1100));
  return new uPlot(
    {
      title,
      width,
      height,
      axes: [
        { stroke: css("--muted"), grid: { stroke: css("--grid") } },
        {
          stroke: css("--muted"),
          grid: { stroke: css("--grid") },
          size: 50 + 8 * unit.length, // room for "1000 ms"
          values: (u, ticks) => ticks.map((t) => `${t}${unit}`),
        },
      ],
      scales: {
        // a few points close together: a minute's axis rather than sub-second ticks
        x: { range: (u, min, max) => (max - min < 60 ? [max - 60, max + 1] : [min, max]) },
        ...(yRange ? { y: { range: yRange } } : {}),
      },
      series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: css(palette[i % palette.length]), width: 1.5, spanGaps: true }))],
    },
    [xs, ...series.map((s) => s.values)],
    el,
  );
}

/** Bars of counts per bucket (a histogram): `labels` name the buckets. */
export function histogram(el, labels, counts, { title } = {}) {
  el.replaceChildren();
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", title || "histogram");
  const width = Math.max(280, Math.min(el.clientWidth || 480, 900));
  const xs = labels.map((_, i) => i);
  return new uPlot(
    {
      title,
      width,
      height: 200,
      scales: { x: { time: false, range: [-0.5, labels.length - 0.5] } },
      axes: [
        { stroke: css("--muted"), values: (u, ticks) => ticks.map((t) => labels[t] ?? ""), grid: { show: false } },
        { stroke: css("--muted"), grid: { stroke: css("--grid") } },
      ],
      series: [{}, { label: "count", stroke: css("--accent"), fill: css("--accent-soft"), paths: uPlot.paths.bars({ size: [0.8, 60] }) }],
    },
    [xs, counts],
    el,
  );
}
