// Charts drawn by uPlot (vendored in /static/vendor/uplot/, a classic script that sets
// window.uPlot): canvas, so twenty overlaid series of 500 points stay smooth, and styles set
// through the CSSOM only, which the Content-Security-Policy allows.

import { el, fmtNum } from "./api.js";

const DEFAULT_WIDTH = 560;
const DEFAULT_HEIGHT = 220;
// Twenty colours a reader can tell apart, one per overlaid job (the compare view's limit).
export const PALETTE = [
  "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#ea580c", "#4f46e5", "#0d9488", "#be123c", "#a16207", "#9333ea", "#0284c7", "#15803d",
  "#c2410c", "#6d28d9", "#475569", "#b45309",
];
export const colorAt = (i) => PALETTE[i % PALETTE.length];
// Tick spacings for axes of whole numbers (steps, epochs, trial numbers): no "epoch 1.5".
export const WHOLE_NUMBERS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2.5e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8];

// The job detail's chart: losses on the left axis, accuracy on the right.
const DETAIL_SERIES = [
  { key: "train_loss", color: "#d97706", scale: "loss" },
  { key: "val_loss", color: "#2563eb", scale: "loss" },
  { key: "val_acc", color: "#16a34a", scale: "acc" },
];

// [{x: [...], y: [...]}, ...] -> uPlot's table [xs, ys1, ys2, ...] on the union of the xs, with
// null where a series has no point (drawn across with spanGaps).
export function alignSeries(list) {
  const xs = [...new Set(list.flatMap((s) => s.x))].sort((a, b) => a - b);
  const columns = list.map((s) => {
    const at = new Map();
    s.x.forEach((x, i) => at.set(x, s.y[i]));
    return xs.map((x) => (at.has(x) && typeof at.get(x) === "number" ? at.get(x) : null));
  });
  return [xs, ...columns];
}

const valueText = (u, v) => (v === null || v === undefined ? "–" : fmtNum(v));

// A uPlot series from {label, color, scale, width, dash, points, paths}.
export function lineSeries(s) {
  return {
    label: s.label,
    stroke: s.color,
    width: s.width ?? 1.5,
    scale: s.scale ?? "y",
    spanGaps: true,
    dash: s.dash,
    points: s.points ?? {},
    paths: s.paths,
    value: valueText,
  };
}

// Draw (or redraw in place) a chart in `box`: the same series with new data only move their
// lines, so a live job's chart keeps its cursor. `box.dataset.series` counts the data series,
// which the browser tests read.
export function drawChart(box, { key, xLabel, series, scales = {}, axes, legend = true, height }, data) {
  const plot = box.uplotChart;
  if (plot && box.dataset.key === key) {
    plot.setData(data);
    return plot;
  }
  destroyChart(box);
  const width = Math.max(260, Math.min(box.clientWidth || DEFAULT_WIDTH, 1400));
  const opts = {
    width,
    height: height ?? DEFAULT_HEIGHT,
    scales: { x: { time: false }, ...scales },
    series: [{ label: xLabel, value: valueText }, ...series],
    axes: axes ?? [{ label: xLabel }, { scale: "y" }],
    legend: { show: legend },
    cursor: { focus: { prox: 16 } },
    focus: { alpha: 0.35 },
  };
  const chart = new window.uPlot(opts, data, box);
  box.uplotChart = chart;
  box.dataset.key = key;
  box.dataset.chart = "uplot";
  box.dataset.series = String(series.length);
  // Follow the box's width (a wider window, a panel opening beside it).
  box.uplotResize = new ResizeObserver(() => {
    const w = Math.max(260, Math.min(box.clientWidth, 1400));
    if (w && Math.abs(w - chart.width) > 4) chart.setSize({ width: w, height: chart.height });
  });
  box.uplotResize.observe(box);
  return chart;
}

export function destroyChart(box) {
  if (box.uplotResize) box.uplotResize.disconnect();
  if (box.uplotChart) box.uplotChart.destroy();
  box.uplotResize = null;
  box.uplotChart = null;
  delete box.dataset.key;
  delete box.dataset.series;
}

// Metric history rows -> {train_loss: [[epoch, v], ...], ...}. `metrics` reports win; the last
// `progress` report of an epoch stands in for train_loss when no metrics report carries it.
export function seriesFromHistory(rows) {
  const perEpoch = new Map();
  const fallback = new Map();
  for (const row of rows) {
    if (row.epoch === null || row.epoch === undefined) continue;
    const values = row.values || {};
    if (row.kind === "metrics") {
      const slot = perEpoch.get(row.epoch) || {};
      for (const s of DETAIL_SERIES) if (typeof values[s.key] === "number") slot[s.key] = values[s.key];
      perEpoch.set(row.epoch, slot);
    } else if (row.kind === "progress" && typeof values.train_loss === "number") {
      fallback.set(row.epoch, values.train_loss);
    }
  }
  const out = {};
  for (const s of DETAIL_SERIES) out[s.key] = [];
  const epochs = [...new Set([...perEpoch.keys(), ...fallback.keys()])].sort((a, b) => a - b);
  for (const epoch of epochs) {
    const slot = perEpoch.get(epoch) || {};
    for (const s of DETAIL_SERIES) {
      let v = slot[s.key];
      if (v === undefined && s.key === "train_loss") v = fallback.get(epoch);
      if (v !== undefined) out[s.key].push([epoch, v]);
    }
  }
  return out;
}

// The job detail's metrics per epoch, drawn into `box` (kept between refreshes).
export function drawJobChart(box, series) {
  const present = DETAIL_SERIES.filter((s) => series[s.key] && series[s.key].length);
  if (!present.length) {
    destroyChart(box);
    box.replaceChildren(el("p", { class: "muted" }, "No per-epoch metrics yet."));
    return;
  }
  if (!box.uplotChart) box.replaceChildren();
  const hasLoss = present.some((s) => s.scale === "loss");
  const hasAcc = present.some((s) => s.scale === "acc");
  const axes = [{ label: "epoch", incrs: WHOLE_NUMBERS }];
  if (hasLoss) axes.push({ scale: "loss", label: "loss" });
  if (hasAcc) axes.push({ scale: "acc", label: "accuracy", side: 1, grid: { show: !hasLoss } });
  const data = alignSeries(present.map((s) => ({ x: series[s.key].map((p) => p[0]), y: series[s.key].map((p) => p[1]) })));
  drawChart(
    box,
    {
      key: `job:${present.map((s) => s.key).join(",")}`,
      xLabel: "epoch",
      series: present.map((s) => lineSeries({ label: s.key, color: s.color, scale: s.scale, points: { size: 5, fill: s.color } })),
      scales: { loss: { auto: true }, acc: { auto: true } },
      axes,
    },
    data,
  );
}
