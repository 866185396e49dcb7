// A small inline SVG line chart of metrics per epoch; losses on the left axis, accuracy on the right.

import { el, fmtNum } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const SERIES = [
  { key: "train_loss", color: "#d97706", axis: "left" },
  { key: "val_loss", color: "#2563eb", axis: "left" },
  { key: "val_acc", color: "#16a34a", axis: "right" },
];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
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
      for (const s of SERIES) if (typeof values[s.key] === "number") slot[s.key] = values[s.key];
      perEpoch.set(row.epoch, slot);
    } else if (row.kind === "progress" && typeof values.train_loss === "number") {
      fallback.set(row.epoch, values.train_loss);
    }
  }
  const out = {};
  for (const s of SERIES) out[s.key] = [];
  const epochs = [...new Set([...perEpoch.keys(), ...fallback.keys()])].sort((a, b) => a - b);
  for (const epoch of epochs) {
    const slot = perEpoch.get(epoch) || {};
    for (const s of SERIES) {
      let v = slot[s.key];
      if (v === undefined && s.key === "train_loss") v = fallback.get(epoch);
      if (v !== undefined) out[s.key].push([epoch, v]);
    }
  }
  return out;
}

function extent(values, fallback) {
  if (!values.length) return fallback;
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    lo -= Math.abs(lo) * 0.1 || 0.5;
    hi += Math.abs(hi) * 0.1 || 0.5;
  }
  return [lo, hi];
}

export function renderChart(series, { width = 460, height = 180 } = {}) {
  const present = SERIES.filter((s) => series[s.key] && series[s.key].length);
  if (!present.length) return el("p", { class: "muted" }, "No per-epoch metrics yet.");
  const pad = { l: 48, r: 44, t: 10, b: 24 };
  const all = present.flatMap((s) => series[s.key]);
  const [x0, x1] = extent(all.map((p) => p[0]), [0, 1]);
  const left = extent(present.filter((s) => s.axis === "left").flatMap((s) => series[s.key].map((p) => p[1])), [0, 1]);
  const right = extent(present.filter((s) => s.axis === "right").flatMap((s) => series[s.key].map((p) => p[1])), [0, 1]);
  const W = width - pad.l - pad.r;
  const H = height - pad.t - pad.b;
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * W;
  const sy = ([lo, hi], y) => pad.t + H - ((y - lo) / (hi - lo)) * H;

  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  root.append(svg("title", {}, "Metrics per epoch"));
  root.append(svg("rect", { x: pad.l, y: pad.t, width: W, height: H, class: "chart-frame" }));
  for (let i = 0; i <= 4; i += 1) {
    const y = pad.t + (H * i) / 4;
    root.append(svg("line", { x1: pad.l, x2: pad.l + W, y1: y, y2: y, class: "chart-grid" }));
    const frac = 1 - i / 4;
    if (present.some((s) => s.axis === "left")) {
      const v = left[0] + (left[1] - left[0]) * frac;
      root.append(svg("text", { x: pad.l - 4, y: y + 3, "text-anchor": "end", class: "chart-tick" }, String(+v.toPrecision(3))));
    }
    if (present.some((s) => s.axis === "right")) {
      const v = right[0] + (right[1] - right[0]) * frac;
      root.append(svg("text", { x: pad.l + W + 4, y: y + 3, class: "chart-tick" }, String(+v.toPrecision(3))));
    }
  }
  const xTicks = Math.min(6, Math.max(1, Math.round(x1 - x0)));
  for (let i = 0; i <= xTicks; i += 1) {
    const x = x0 + ((x1 - x0) * i) / xTicks;
    root.append(svg("text", { x: sx(x), y: height - 8, "text-anchor": "middle", class: "chart-tick" }, String(Math.round(x))));
  }
  for (const s of present) {
    const range = s.axis === "left" ? left : right;
    const pts = series[s.key].map(([x, y]) => `${sx(x).toFixed(1)},${sy(range, y).toFixed(1)}`);
    root.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: s.color, "stroke-width": 2 }));
    if (pts.length === 1) {
      const [cx, cy] = pts[0].split(",");
      root.append(svg("circle", { cx, cy, r: 3, fill: s.color }));
    }
  }
  const legend = el(
    "div",
    { class: "chart-legend" },
    present.map((s) => {
      const last = series[s.key][series[s.key].length - 1][1];
      return el("span", {}, el("i", { style: { background: s.color } }), `${s.key} ${fmtNum(last)}${s.axis === "right" ? " (right axis)" : ""}`);
    }),
  );
  return el("div", { class: "chart-box" }, root, legend);
}
