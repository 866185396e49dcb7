// A sweep's two charts, both uPlot: the objective over trials with the best so far, and parallel
// coordinates (each trial a line across its hyperparameters and its objective, every axis scaled
// to 0..1, coloured by how good the trial was).

import { fmtNum } from "./api.js";
import { drawChart, lineSeries, WHOLE_NUMBERS } from "./chart.js";

const WORST = [148, 163, 184]; // slate: the worst trial
const BEST = [220, 38, 38]; // red: the best trial
const NO_VALUE = "#cbd5e1";
export const COLOUR_KEY = "each line a trial · grey: worst objective → red: best · pale: no value yet · thick: the best trial";

const maximize = (objective) => objective.direction === "maximize";
const scored = (trials) => trials.filter((t) => typeof t.value === "number").sort((a, b) => a.number - b.number);

// A colour between WORST (t = 0) and BEST (t = 1).
function shade(t) {
  const mix = WORST.map((w, i) => Math.round(w + (BEST[i] - w) * t));
  return `rgb(${mix.join(",")})`;
}

// The trials' values in order of trial number, and the best value up to each.
export function objectiveSeries(trials, objective) {
  const done = scored(trials);
  const better = maximize(objective) ? Math.max : Math.min;
  let best = null;
  const bestSoFar = done.map((t) => {
    best = best === null ? t.value : better(best, t.value);
    return best;
  });
  return [done.map((t) => t.number), done.map((t) => t.value), bestSoFar];
}

export function drawObjective(box, trials, objective) {
  const data = objectiveSeries(trials, objective);
  drawChart(
    box,
    {
      key: "sweep-objective",
      xLabel: "trial",
      series: [
        lineSeries({ label: objective.metric, color: "#2563eb", points: { show: true, size: 8, fill: "#2563eb" }, paths: () => null }),
        lineSeries({ label: "best so far", color: "#16a34a", width: 2, paths: window.uPlot.paths.stepped({ align: 1 }), points: { show: false } }),
      ],
      axes: [{ label: "trial", incrs: WHOLE_NUMBERS }, { scale: "y", label: objective.metric }],
    },
    data,
  );
}

// Where a hyperparameter's value sits on its axis, 0..1: log scale for log_uniform, the value's
// place in the list for a choice.
export function normalise(param, value) {
  if (value === null || value === undefined) return null;
  let t;
  if (param.type === "choice") {
    const i = param.values.findIndex((v) => v === value);
    if (i < 0) return null;
    t = param.values.length > 1 ? i / (param.values.length - 1) : 0.5;
  } else if (param.type === "log_uniform") {
    t = (Math.log(value) - Math.log(param.low)) / (Math.log(param.high) - Math.log(param.low));
  } else {
    t = (value - param.low) / (param.high - param.low);
  }
  return Number.isFinite(t) ? Math.max(0, Math.min(1, t)) : null;
}

function axisLabel(name, param) {
  if (param.type === "choice") {
    const text = param.values.map(String).join(" | ");
    return `${name}\n${text.length > 28 ? `${text.slice(0, 27)}…` : text}`;
  }
  return `${name}${param.type === "log_uniform" ? " (log)" : ""}\n${fmtNum(param.low)} … ${fmtNum(param.high)}`;
}

export function parallelSeries(trials, space, objective) {
  const names = Object.keys(space);
  const done = scored(trials);
  const values = done.map((t) => t.value);
  const lo = values.length ? Math.min(...values) : 0;
  const hi = values.length ? Math.max(...values) : 1;
  const objectiveAt = (v) => (typeof v !== "number" ? null : hi > lo ? (v - lo) / (hi - lo) : 0.5);
  const ordered = [...trials].sort((a, b) => a.number - b.number);
  const lines = ordered.map((t) => {
    const y = [...names.map((n) => normalise(space[n], (t.params || {})[n])), objectiveAt(t.value)];
    const score = objectiveAt(t.value);
    // How good the trial is, 0 (worst) .. 1 (best), whichever way the objective points.
    const goodness = score === null ? null : maximize(objective) ? score : 1 - score;
    return { trial: t, y, goodness };
  });
  const labels = [...names.map((n) => axisLabel(n, space[n])), `${objective.metric} ${maximize(objective) ? "↑" : "↓"}\n${fmtNum(lo)} … ${fmtNum(hi)}`];
  return { labels, lines };
}

export function drawParallel(box, trials, space, objective, bestTrial) {
  const { labels, lines } = parallelSeries(trials, space, objective);
  const xs = labels.map((_, i) => i);
  const last = xs.length - 1;
  drawChart(
    box,
    {
      key: `sweep-parallel:${lines.map((l) => l.trial.number).join(",")}:${bestTrial}`,
      xLabel: "axis",
      legend: false,
      height: 260,
      series: lines.map((l) =>
        lineSeries({
          label: `trial ${l.trial.number}`,
          color: l.goodness === null ? NO_VALUE : shade(l.goodness),
          width: l.trial.number === bestTrial ? 3.5 : 1.5,
          points: { size: 5 },
        })),
      scales: {
        x: { time: false, range: () => [-0.2, last + 0.2] },
        y: { range: () => [-0.03, 1.03] },
      },
      axes: [
        { size: 48, splits: () => xs, values: () => labels, grid: { show: true, stroke: "#94a3b8", width: 1 } },
        { scale: "y", label: "scaled 0..1", splits: () => [0, 0.5, 1], values: (u, splits) => splits.map(String) },
      ],
    },
    [xs, ...lines.map((l) => l.y)],
  );
}
