// The job detail panel: spec, attempts, metrics and their chart, resource use and its chart,
// artifacts, cancel, live log.

import { api, badge, el, fill, fmtBytes, fmtDuration, fmtNum, fmtTime, progressBar, query } from "./api.js";
import { alignSeries, colorAt, destroyChart, drawChart, drawJobChart, lineSeries, seriesFromHistory } from "./chart.js";
import { LogView } from "./logs.js";
import { mayCancel, mayWrite } from "./session.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);
const METRICS_PAGE = 10000;
const USAGE_PAGE = 10000;
const GIB = 1024 ** 3;
const MIB = 1024 ** 2;

// The x axis's unit for samples spanning `seconds`: seconds for a short job, hours for a long one.
function timeUnit(seconds) {
  if (seconds < 120) return { label: "seconds", size: 1 };
  return seconds < 7200 ? { label: "minutes", size: 60 } : { label: "hours", size: 3600 };
}

// Usage samples -> the chart's series: each GPU's utilisation (%) and memory (GiB) where the job
// had GPUs, else its processes' CPU (% of one core) and resident memory (MiB); x in `unit`s since
// the first sample.
export function usageSeries(rows, unit) {
  if (!rows.length) return [];
  const t0 = Date.parse(rows[0].ts);
  const x = (row) => (Date.parse(row.ts) - t0) / 1000 / unit.size;
  const withGpus = rows.filter((r) => r.gpus && r.gpus.length);
  if (withGpus.length) {
    const indices = [...new Set(withGpus.flatMap((r) => r.gpus.map((g) => g.index)))].sort((a, b) => a - b);
    return indices.flatMap((index, i) => {
      const points = withGpus.map((r) => [x(r), r.gpus.find((g) => g.index === index)]).filter(([, g]) => g);
      return [
        { label: `GPU ${index} util %`, color: colorAt(i), scale: "pct", x: points.map((p) => p[0]), y: points.map(([, g]) => g.util) },
        { label: `GPU ${index} memory GiB`, color: colorAt(i), scale: "mem", dash: [4, 4], x: points.map((p) => p[0]), y: points.map(([, g]) => (g.mem_used === null ? null : g.mem_used / GIB)) },
      ];
    });
  }
  const cpu = rows.filter((r) => r.cpu_percent !== null);
  return [
    { label: "CPU %", color: colorAt(0), scale: "pct", x: cpu.map(x), y: cpu.map((r) => r.cpu_percent) },
    { label: "memory MiB", color: colorAt(1), scale: "mem", dash: [4, 4], x: cpu.map(x), y: cpu.map((r) => r.rss / MIB) },
  ];
}

function drawUsageChart(box, rows) {
  const span = rows.length ? (Date.parse(rows[rows.length - 1].ts) - Date.parse(rows[0].ts)) / 1000 : 0;
  const unit = timeUnit(span);
  const series = usageSeries(rows, unit);
  if (!series.length) {
    destroyChart(box);
    box.replaceChildren(el("p", { class: "muted" }, "No resource-use samples yet."));
    return;
  }
  if (!box.uplotChart) box.replaceChildren();
  const gpu = series[0].label.startsWith("GPU");
  drawChart(
    box,
    {
      key: `usage:${unit.label}:${series.map((s) => s.label).join(",")}`,
      xLabel: unit.label,
      series: series.map((s) => lineSeries(s)),
      scales: { pct: { auto: true, range: (u, min, max) => [0, Math.max(100, max)] }, mem: { auto: true } },
      axes: [{ label: unit.label }, { scale: "pct", label: gpu ? "utilisation %" : "CPU %" }, { scale: "mem", label: gpu ? "GPU memory GiB" : "memory MiB", side: 1, grid: { show: false } }],
    },
    alignSeries(series),
  );
}

// The job's summary of its samples (`progress.usage`, kept by the master).
function usageFacts(usage) {
  const pct = (v) => `${fmtNum(Math.round(v * 10) / 10)} %`;
  const facts = [];
  if (typeof usage.gpu_util_mean === "number") facts.push(["GPU utilisation (mean)", pct(usage.gpu_util_mean)]);
  if (typeof usage.gpu_mem_peak === "number") facts.push(["GPU memory (peak)", `${fmtBytes(usage.gpu_mem_peak)} of ${fmtBytes(usage.gpu_mem_total)}`]);
  if (typeof usage.cpu_percent_mean === "number") facts.push(["CPU (mean)", pct(usage.cpu_percent_mean)]);
  if (typeof usage.rss_peak === "number") facts.push(["memory (peak)", fmtBytes(usage.rss_peak)]);
  return facts;
}

export class JobDetail {
  constructor(root, { onChange, onClose }) {
    this.root = root;
    this.onChange = onChange;
    this.onClose = onClose;
    this.jobId = null;
    this.logView = null;
  }

  open(jobId) {
    this.close(false);
    this.jobId = jobId;
    this.job = null;
    this.history = [];
    this.historyDone = false;
    this.usage = [];
    this.usageDone = false;
    this.artifactsDone = false;
    this.title = el("h2", {}, `Job #${jobId}`);
    this.summary = el("div", { class: "summary" });
    this.origin = el("div", { class: "origin" });
    this.message = el("p", { class: "error", hidden: true, role: "alert" });
    this.cancelBtn = el("button", { type: "button", class: "danger", hidden: true, onclick: () => this.cancel() }, "Cancel job");
    this.rerunLink = el("a", { class: "button-link", hidden: true, href: `#rerun-${jobId}`, title: "Submit this job again with changes" }, "Re-run…");
    this.closeBtn = el("button", { type: "button", class: "small", title: "Close", onclick: () => this.close(true) }, "✕");
    this.errorBox = el("pre", { class: "job-error", hidden: true });
    this.waitBox = el("p", { class: "wait-reason-detail", hidden: true, title: "Why the job has not started, as admission last saw it" });
    this.warningsBox = el("ul", { class: "job-warnings", hidden: true, title: "What the farm noticed without ending the job" });
    this.attempts = el("tbody");
    // The panes with the job's contents are built once the job says the caller may see them.
    this.panes = el("div", { class: "panes" });
    fill(
      this.root,
      el("div", { class: "detail-head" }, this.title, el("div", { class: "actions" }, this.rerunLink, this.cancelBtn, this.closeBtn)),
      this.summary,
      this.origin,
      this.message,
      this.waitBox,
      this.errorBox,
      this.warningsBox,
      el("section", {}, el("h3", {}, "Attempts"),
        el("div", { class: "scroll-x" }, el("table", { class: "compact" },
          el("thead", {}, el("tr", {}, ["#", "status", "node", "started", "ran", "exit", "error"].map((h) => el("th", {}, h)))),
          this.attempts))),
      this.panes,
    );
    this.root.hidden = false;
    return this.refresh();
  }

  // Metrics, chart, artifacts, live log and spec: only for a job whose details the caller sees.
  buildPanes(job) {
    if (job.details_hidden) {
      fill(this.panes, el("p", { class: "muted hidden-note" },
        `This is ${job.owner || "someone else"}'s job: its log, metrics and artifacts are visible to its owner and admins only.`));
      return;
    }
    this.metrics = el("div", { class: "kv" });
    this.chart = el("div", { class: "chart-wrap" });
    this.usageFacts = el("div", { class: "kv usage-summary" });
    this.idleFlag = el("p", { class: "error gpu-idle", hidden: true, role: "status" });
    // Not `chart-wrap`: that names the metrics chart (the browser tests find it by it).
    this.usageChart = el("div", { class: "usage-chart" });
    this.artifacts = el("ul", { class: "artifacts" });
    this.spec = el("pre", { class: "spec" }, JSON.stringify(job.spec, null, 2));
    const logs = el("div", { class: "logs" });
    fill(
      this.panes,
      el("div", { class: "detail-grid" },
        el("section", {}, el("h3", {}, "Latest metrics"), this.metrics, this.chart),
        el("section", {}, el("h3", {}, "Artifacts"), this.artifacts),
      ),
      el("section", { class: "usage" }, el("h3", {}, "Resource use"), this.idleFlag, this.usageFacts, this.usageChart),
      el("section", {}, el("h3", {}, "Log"), logs),
      el("details", {}, el("summary", {}, "Spec"), this.spec),
    );
    this.logView = new LogView(logs, job.id);
  }

  close(notify) {
    if (this.chart) destroyChart(this.chart);
    this.chart = null;
    if (this.usageChart) destroyChart(this.usageChart);
    this.usageChart = null;
    if (this.logView) this.logView.close();
    this.logView = null;
    this.jobId = null;
    this.root.hidden = true;
    fill(this.root);
    if (notify && this.onClose) this.onClose();
  }

  async refresh() {
    const jobId = this.jobId;
    if (jobId === null) return;
    let job;
    try {
      job = await api.get(`/api/jobs/${jobId}`);
    } catch (err) {
      if (jobId === this.jobId) this.showMessage(err.message);
      return;
    }
    if (jobId !== this.jobId) return;
    if (this.job === null) this.buildPanes(job);
    this.job = job;
    this.renderJob(job);
    if (job.details_hidden) return;
    await Promise.all([this.refreshHistory(jobId, job), this.refreshUsage(jobId, job), this.refreshArtifacts(jobId, job)]);
  }

  renderJob(job) {
    const name = job.name ? ` · ${job.name}` : "";
    this.title.textContent = `Job #${job.id}${name}`;
    const what = job.spec.recipe ? `recipe ${job.spec.recipe}` : `command ${(job.spec.command || []).join(" ")}`;
    fill(
      this.summary,
      badge(job.status),
      job.cancel_requested && !TERMINAL.has(job.status) ? el("span", { class: "muted" }, "cancel requested") : null,
      job.details_hidden ? null : el("span", {}, what),
      el("span", {}, `owner ${job.owner || "–"}`),
      el("span", {}, `queue ${job.queue}`),
      el("span", {}, `priority ${job.priority}`),
      job.details_hidden ? null : el("span", {}, `devices ${job.spec.devices ?? 1}`),
      job.node ? el("span", {}, `node ${job.node}`) : null,
      job.handbacks ? el("span", { title: "attempts handed back by a worker shutting down" }, `hand-backs ${job.handbacks}`) : null,
      job.preemptions ? el("span", { class: "preemptions", title: "times the farm stopped it for a job of higher priority; it resumes from its checkpoint" }, `preemptions ${job.preemptions}`) : null,
      el("span", { title: job.created_at }, `submitted ${fmtTime(job.created_at)}`),
      job.started_at ? el("span", {}, `ran ${fmtDuration(job.started_at, job.finished_at)}`) : null,
      job.details_hidden ? null : progressBar(job.progress),
    );
    this.renderOrigin(job);
    this.rerunLink.hidden = job.details_hidden || !mayWrite();
    this.cancelBtn.hidden = !mayCancel(job);
    this.cancelBtn.disabled = job.cancel_requested;
    const waiting = job.status === "queued" && job.wait_reason;
    this.waitBox.hidden = !waiting;
    this.waitBox.textContent = waiting ? job.wait_reason : "";
    this.errorBox.hidden = !job.error;
    this.errorBox.textContent = job.error || "";
    const warnings = job.warnings || [];
    this.warningsBox.hidden = !warnings.length;
    fill(this.warningsBox, warnings.map((w) => el("li", {}, w)));
    this.renderAttempts(job);
    if (job.details_hidden) return;
    const keys = Object.keys(job.metrics || {}).sort();
    fill(
      this.metrics,
      keys.length ? keys.map((k) => el("div", {}, el("span", { class: "k" }, k), el("span", { class: "v" }, fmtNum(job.metrics[k])))) : el("span", { class: "muted" }, TERMINAL.has(job.status) ? "none" : "none yet"),
    );
    const usage = (job.progress && job.progress.usage) || {};
    const facts = usageFacts(usage);
    fill(
      this.usageFacts,
      facts.length ? facts.map(([k, v]) => el("div", {}, el("span", { class: "k" }, k), el("span", { class: "v" }, v))) : el("span", { class: "muted" }, "no samples yet"),
    );
    // Flagged by the master's idle-GPU rule (gpu_idle_threshold, gpu_idle_after); the warning says since when.
    this.idleFlag.hidden = !usage.gpu_idle && !usage.idle_stopped;
    this.idleFlag.textContent = usage.idle_stopped || (usage.gpu_idle ? "Its GPUs are idle: the job holds them but does not use them." : "");
  }

  // Project and tags, and where the job came from and went: re-runs both ways, its sweep.
  renderOrigin(job) {
    const jobLink = (id) => el("a", { href: `#job-${id}`, class: "job-link", "data-job": id }, `#${id}`);
    const reruns = job.reruns || [];
    fill(
      this.origin,
      el("span", { class: "project" }, `project ${job.project}`),
      (job.tags || []).length ? el("span", { class: "tags" }, (job.tags || []).map((t) => el("span", { class: "tag" }, t))) : null,
      job.rerun_of ? el("span", { class: "rerun-of" }, "re-run of ", jobLink(job.rerun_of)) : null,
      reruns.length ? el("span", { class: "reruns" }, "re-runs: ", reruns.flatMap((id, i) => (i ? [", ", jobLink(id)] : [jobLink(id)]))) : null,
      job.sweep_id
        ? el("span", { class: "sweep-link" }, el("a", { href: `#sweep-${job.sweep_id}` }, `sweep #${job.sweep_id}`), job.trial === null ? null : ` trial ${job.trial}`)
        : null,
    );
  }

  renderAttempts(job) {
    fill(
      this.attempts,
      job.attempt_list.map((a) =>
        el("tr", {},
          el("td", { class: "num" }, String(a.number)),
          el("td", {}, badge(a.status)),
          el("td", {}, a.node || ""),
          el("td", { title: a.started_at || "" }, fmtTime(a.started_at)),
          el("td", {}, fmtDuration(a.started_at, a.finished_at)),
          el("td", { class: "num" }, a.exit_code === null ? "" : String(a.exit_code)),
          el("td", { class: "wrap" }, a.error || ""),
        )),
    );
  }

  // Metric history grows at the end, oldest first: read only what is new since the last call.
  async refreshHistory(jobId, job) {
    if (this.historyDone) return;
    const before = this.history.length;
    try {
      for (;;) {
        const rows = await api.get(`/api/jobs/${jobId}/metrics${query({ offset: this.history.length, limit: METRICS_PAGE })}`);
        if (jobId !== this.jobId) return;
        this.history = this.history.concat(rows);
        if (rows.length < METRICS_PAGE) break;
      }
    } catch (err) {
      this.showMessage(`metrics: ${err.message}`);
      return;
    }
    this.historyDone = TERMINAL.has(job.status);
    if (before && this.history.length === before) return;
    drawJobChart(this.chart, seriesFromHistory(this.history));
  }

  // Usage samples also grow at the end: read only the new ones.
  async refreshUsage(jobId, job) {
    if (this.usageDone) return;
    const before = this.usage.length;
    try {
      for (;;) {
        const rows = await api.get(`/api/jobs/${jobId}/usage${query({ offset: this.usage.length, limit: USAGE_PAGE })}`);
        if (jobId !== this.jobId) return;
        this.usage = this.usage.concat(rows);
        if (rows.length < USAGE_PAGE) break;
      }
    } catch (err) {
      // In its own box, not the panel's alert: resource use is a side view of the job.
      destroyChart(this.usageChart);
      this.usageChart.replaceChildren(el("p", { class: "muted" }, `Resource use unavailable: ${err.message}`));
      return;
    }
    this.usageDone = TERMINAL.has(job.status);
    if (before && this.usage.length === before) return;
    drawUsageChart(this.usageChart, this.usage);
  }

  async refreshArtifacts(jobId, job) {
    if (this.artifactsDone) return;
    let items;
    try {
      items = await api.get(`/api/jobs/${jobId}/artifacts`);
    } catch (err) {
      this.showMessage(`artifacts: ${err.message}`);
      return;
    }
    if (jobId !== this.jobId) return;
    this.artifactsDone = TERMINAL.has(job.status);
    fill(
      this.artifacts,
      items.length
        ? items.map((a) => {
            const href = `/api/jobs/${jobId}/artifacts/${a.name.split("/").map(encodeURIComponent).join("/")}`;
            return el("li", {},
              el("a", { href, download: a.name.split("/").pop() }, a.name),
              el("span", { class: "muted" }, ` ${fmtBytes(a.size)} · attempt ${a.attempt}`),
              a.sha256 ? el("code", { class: "sha", title: `SHA-256 ${a.sha256}` }, a.sha256.slice(0, 12)) : null);
          })
        : el("li", { class: "muted" }, TERMINAL.has(job.status) ? "none" : "none yet"),
    );
  }

  async cancel() {
    const jobId = this.jobId;
    this.cancelBtn.disabled = true;
    this.showMessage("");
    try {
      await api.post(`/api/jobs/${jobId}/cancel`);
    } catch (err) {
      if (jobId === this.jobId) {
        this.showMessage(`Cancel failed: ${err.message}`);
        this.cancelBtn.disabled = false;
      }
      return;
    }
    await this.refresh();
    if (this.onChange) this.onChange();
  }

  showMessage(text) {
    if (!this.message) return;
    this.message.hidden = !text;
    this.message.textContent = text;
  }
}
