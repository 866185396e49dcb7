// One sweep's page (GET /api/sweeps/{id}): its trials in a table, the objective over trials,
// parallel coordinates of the hyperparameters against the objective, and the best trial.

import { api, badge, el, fill, fmtNum, fmtTime } from "./api.js";
import { destroyChart } from "./chart.js";
import { isAdmin, me, mayWrite } from "./session.js";
import { countsText, objectiveText } from "./sweeps.js";
import { COLOUR_KEY, drawObjective, drawParallel } from "./sweepcharts.js";

const valueText = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? fmtNum(v) : String(v));

function mayCancelSweep(sweep) {
  if (sweep.status !== "running" || me.current === null) return false;
  return isAdmin() || (mayWrite() && sweep.owner === me.current.name);
}

export class SweepPage {
  constructor(root) {
    this.root = root;
    this.sweepId = null;
    this.finished = false;
    this.request = 0;
  }

  open(sweepId) {
    this.close();
    this.sweepId = sweepId;
    this.title = el("h2", {}, `Sweep #${sweepId}`);
    this.cancelBtn = el("button", { type: "button", class: "danger", hidden: true, onclick: () => this.cancel() }, "Cancel sweep");
    this.summary = el("div", { class: "summary" });
    this.message = el("p", { class: "error", role: "alert", hidden: true });
    this.best = el("div", { class: "sweep-best" });
    this.objectiveBox = el("div", { class: "chart-wrap", id: "sweep-objective" });
    this.parallelBox = el("div", { class: "chart-wrap", id: "sweep-parallel" });
    this.trials = el("div", { class: "scroll-x" });
    fill(
      this.root,
      el("div", { class: "detail-head" }, this.title, el("div", { class: "actions" }, this.cancelBtn, el("a", { href: "#sweeps" }, "All sweeps"))),
      this.summary,
      this.message,
      el("h3", {}, "Best trial"), this.best,
      el("div", { class: "detail-grid" },
        el("section", {}, el("h3", {}, "Objective over trials"), this.objectiveBox),
        el("section", {}, el("h3", {}, "Hyperparameters against the objective"), this.parallelBox,
          el("p", { class: "muted chart-key" }, COLOUR_KEY))),
      el("h3", {}, "Trials"), this.trials,
    );
    return this.refresh();
  }

  close() {
    this.request += 1;
    if (this.objectiveBox) destroyChart(this.objectiveBox);
    if (this.parallelBox) destroyChart(this.parallelBox);
    this.objectiveBox = null;
    this.parallelBox = null;
    this.sweepId = null;
    this.finished = false;
    fill(this.root);
  }

  // Re-read the sweep while it runs; a finished one is drawn once.
  async refresh() {
    const sweepId = this.sweepId;
    if (sweepId === null || this.finished) return;
    const request = ++this.request;
    let sweep;
    try {
      sweep = await api.get(`/api/sweeps/${sweepId}`);
    } catch (err) {
      if (request === this.request) this.showMessage(err.message);
      return;
    }
    if (request !== this.request) return;
    this.showMessage("");
    this.finished = sweep.status !== "running";
    this.render(sweep);
  }

  render(sweep) {
    const spec = sweep.spec;
    if (!spec.objective) {
      this.title.textContent = `Sweep #${sweep.id} · ${sweep.name}`;
      fill(this.summary, badge(sweep.status), el("span", {}, `owner ${sweep.owner || "–"}`), el("span", {}, countsText(sweep.counts)));
      fill(this.best, el("span", { class: "muted hidden-note" }, "Its trials are visible to its owner and admins only."));
      return;
    }
    this.title.textContent = `Sweep #${sweep.id} · ${sweep.name}`;
    this.cancelBtn.hidden = !mayCancelSweep(sweep);
    fill(
      this.summary,
      badge(sweep.status),
      el("span", {}, `owner ${sweep.owner || "–"}`),
      el("span", {}, `project ${sweep.project}`),
      el("span", {}, `objective ${objectiveText(spec.objective)}`),
      el("span", {}, `sampler ${spec.sampler}, pruner ${spec.pruner}`),
      el("span", {}, `budget ${spec.budget}, ${spec.parallelism} at once`),
      el("span", { class: "counts" }, countsText(sweep.counts)),
      el("span", { title: sweep.created_at }, `started ${fmtTime(sweep.created_at)}`),
      sweep.error ? el("span", { class: "error" }, sweep.error) : null,
    );
    const best = sweep.trials.find((t) => t.number === sweep.best_trial);
    fill(
      this.best,
      best
        ? [
            el("strong", {}, `trial ${best.number}`), " ",
            el("a", { href: `#job-${best.job_id}` }, `job #${best.job_id}`),
            ` ${spec.objective.metric} `, el("strong", { class: "best-value" }, valueText(sweep.best_value)), " · ",
            Object.entries(best.params || {}).map(([k, v]) => `${k}=${valueText(v)}`).join(", "),
          ]
        : el("span", { class: "muted" }, "No trial has finished yet."),
    );
    drawObjective(this.objectiveBox, sweep.trials, spec.objective);
    drawParallel(this.parallelBox, sweep.trials, spec.space, spec.objective, sweep.best_trial);
    this.renderTrials(sweep);
  }

  renderTrials(sweep) {
    const names = Object.keys(sweep.spec.space);
    const rows = [...sweep.trials].sort((a, b) => a.number - b.number).map((t) =>
      el("tr", { "data-trial": t.number, class: t.number === sweep.best_trial ? "best" : "" },
        el("td", { class: "num" }, String(t.number)),
        el("td", {}, t.job_id ? el("a", { href: `#job-${t.job_id}` }, `#${t.job_id}`) : "–"),
        el("td", {}, badge(t.state)),
        names.map((n) => el("td", { class: "num" }, valueText((t.params || {})[n]))),
        el("td", { class: "num value" }, valueText(t.value), t.number === sweep.best_trial ? " ★" : ""),
        el("td", {}, t.job_status ? badge(t.job_status) : ""),
        el("td", { class: "hide-narrow" }, fmtTime(t.created_at)),
      ));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: names.length + 6, class: "empty" }, "No trials yet.")));
    fill(this.trials, el("table", { class: "compact sweep-trials" },
      el("thead", {}, el("tr", {}, ["trial", "job", "state", ...names, sweep.spec.objective.metric, "job status", "started"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
  }

  async cancel() {
    const sweepId = this.sweepId;
    this.cancelBtn.disabled = true;
    try {
      await api.post(`/api/sweeps/${sweepId}/cancel`);
    } catch (err) {
      this.showMessage(`Cancel failed: ${err.message}`);
    } finally {
      this.cancelBtn.disabled = false;
    }
    this.finished = false;
    await this.refresh();
  }

  showMessage(text) {
    if (!this.message) return;
    this.message.hidden = !text;
    this.message.textContent = text;
  }
}
