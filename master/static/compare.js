// The compare view: 2 to 20 jobs overlaid, one chart per metric over steps or epochs, their specs
// side by side with the differing fields highlighted, and their final metrics with the best of each
// marked (GET /api/compare).

import { api, badge, el, fill, fmtNum, query } from "./api.js";
import { alignSeries, colorAt, destroyChart, drawChart, lineSeries, WHOLE_NUMBERS } from "./chart.js";
import { compareHash } from "./router.js";

//: Points per series the master thins each metric to; uPlot draws 20 x 500 without a stutter.
const POINTS = 500;
const X_CHOICES = ["step", "epoch"];

//: Longer spec values (a command's inline source) are cut in the table; the cell's title has all.
const CELL_CHARS = 60;

const fullText = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? fmtNum(v) : typeof v === "object" ? JSON.stringify(v) : String(v));
const cellText = (v) => {
  const text = fullText(v);
  return text.length > CELL_CHARS ? `${text.slice(0, CELL_CHARS - 1)}…` : text;
};

export class CompareView {
  constructor(root) {
    this.root = root;
    this.boxes = [];
    this.request = 0;
  }

  async open(jobIds, x) {
    const axis = X_CHOICES.includes(x) ? x : "step";
    const request = ++this.request;
    this.clearCharts();
    fill(this.root, el("h2", {}, `Compare ${jobIds.length} jobs`), el("p", { class: "muted" }, "Loading…"));
    let data;
    try {
      data = await api.get(`/api/compare${query({ jobs: jobIds.join(","), x: axis, points: POINTS })}`);
    } catch (err) {
      if (request === this.request) {
        fill(this.root, el("h2", {}, "Compare"), el("p", { class: "error", role: "alert" }, err.message), el("a", { href: "#" }, "Back to the jobs"));
      }
      return;
    }
    if (request !== this.request) return;
    this.render(data, jobIds);
  }

  clearCharts() {
    for (const box of this.boxes) destroyChart(box);
    this.boxes = [];
  }

  close() {
    this.request += 1;
    this.clearCharts();
    fill(this.root);
  }

  render(data, jobIds) {
    const jobs = data.jobs;
    const color = new Map(jobs.map((j, i) => [j.id, colorAt(i)]));
    const xSelect = el("select", { id: "compare-x" }, X_CHOICES.map((c) => el("option", { value: c, selected: c === data.x }, c)));
    xSelect.addEventListener("change", () => {
      location.hash = compareHash(jobIds, xSelect.value);
    });
    const metrics = Object.keys(data.metrics).sort();
    const charts = metrics.map((m) => {
      const box = el("div", { class: "chart-wrap compare-chart-box", "data-metric": m, "data-x": data.x });
      return { metric: m, box, card: el("div", { class: "compare-chart" }, el("h3", {}, m), box) };
    });
    fill(
      this.root,
      el("div", { class: "card-head" },
        el("h2", {}, `Compare ${jobs.length} jobs`),
        el("label", {}, "x ", xSelect),
        el("a", { href: "#" }, "Back to the jobs")),
      el("ul", { class: "compare-jobs" }, jobs.map((j) =>
        el("li", { "data-job": j.id },
          el("i", { class: "swatch", style: { background: color.get(j.id) } }),
          el("a", { href: `#job-${j.id}` }, `#${j.id}`), ` ${j.name || ""} `, badge(j.status),
          el("span", { class: "muted" }, ` ${j.owner || "–"} · ${j.project}`)))),
      el("h3", {}, "Metrics"),
      charts.length ? el("div", { class: "compare-charts" }, charts.map((c) => c.card)) : el("p", { class: "muted" }, "None of these jobs reported metrics."),
      el("div", { class: "card-head" }, el("h3", {}, "Spec"), this.differsOnlyBox()),
      this.specTable(data, jobs),
      el("h3", {}, "Final metrics"),
      this.finalTable(data, jobs),
    );
    for (const c of charts) {
      const lines = data.metrics[c.metric];
      const tableData = alignSeries(lines.map((l) => ({ x: l.x, y: l.y })));
      drawChart(
        c.box,
        {
          key: `compare:${c.metric}:${data.x}:${lines.map((l) => l.job_id).join(",")}`,
          xLabel: data.x,
          series: lines.map((l) => lineSeries({ label: `#${l.job_id}`, color: color.get(l.job_id) })),
          axes: [{ label: data.x, incrs: WHOLE_NUMBERS }, { scale: "y", label: c.metric }],
        },
        tableData,
      );
      this.boxes.push(c.box);
    }
  }

  // With many jobs the spec table is long: this box keeps only the fields that differ.
  differsOnlyBox() {
    const box = el("input", { type: "checkbox", id: "compare-differs-only" });
    box.addEventListener("change", () => {
      const table = this.root.querySelector("table.compare-spec");
      if (table) table.classList.toggle("differs-only", box.checked);
    });
    return el("label", { class: "check" }, box, " only fields that differ");
  }

  specTable(data, jobs) {
    if (!data.spec.length) return el("p", { class: "muted" }, "No spec fields.");
    return el("div", { class: "scroll-x" }, el("table", { class: "compact compare-spec" },
      el("thead", {}, el("tr", {}, el("th", {}, "field"), jobs.map((j) => el("th", { class: "num" }, `#${j.id}`)))),
      el("tbody", {}, data.spec.map((row) =>
        el("tr", { class: row.differs ? "differs" : "", "data-field": row.field, title: row.differs ? "differs between the jobs" : "" },
          el("td", { class: "field" }, row.field),
          row.values.map((v) => el("td", { class: "num", title: fullText(v).length > CELL_CHARS ? fullText(v) : null }, cellText(v))))))));
  }

  // One row per job, one column per metric; the best value of each column is marked.
  finalTable(data, jobs) {
    if (!data.final.length) return el("p", { class: "muted" }, "No final metrics.");
    return el("div", { class: "scroll-x" }, el("table", { class: "compact compare-final" },
      el("thead", {}, el("tr", {}, el("th", {}, "job"), data.final.map((f) =>
        el("th", { class: "num", "data-metric": f.metric, title: f.lower_is_better ? "lower is better" : "higher is better" },
          `${f.metric} ${f.lower_is_better ? "↓" : "↑"}`)))),
      el("tbody", {}, jobs.map((j, i) =>
        el("tr", { "data-job": j.id },
          el("td", {}, el("i", { class: "swatch", style: { background: colorAt(i) } }), el("a", { href: `#job-${j.id}` }, `#${j.id}`), j.name ? ` ${j.name}` : ""),
          data.final.map((f) => {
            const best = f.best === j.id;
            return el("td", { class: best ? "num best" : "num", "data-metric": f.metric, title: best ? "best of the compared jobs" : "" },
              cellText(f.values[i]), best ? " ★" : "");
          }))))));
  }
}
