// The jobs table: filters, newest first, "older" pagination, refreshed in place; boxes to pick
// jobs for the compare view.

import { api, badge, el, fill, fmtDuration, fmtTime, progressBar, query, valMetrics } from "./api.js";
import { mayCancel } from "./session.js";

const PAGE = 50;
const MAX_REFRESH = 500;
//: The compare view overlays 2 to 20 jobs (GET /api/compare's limit).
export const COMPARE_MIN = 2;
export const COMPARE_MAX = 20;
export const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "pruned"];

export class JobsTable {
  constructor({ tbody, statusFilter, queueFilter, mineFilter, ownerFilter, projectFilter, tagFilter, compareBtn, olderBtn, info, onSelect, onCancel, onCompare }) {
    this.tbody = tbody;
    this.ownerFilter = ownerFilter;
    this.projectFilter = projectFilter;
    this.tagFilter = tagFilter;
    this.compareBtn = compareBtn;
    this.picked = new Set();
    this.statusFilter = statusFilter;
    this.queueFilter = queueFilter;
    this.mineFilter = mineFilter;
    this.onCancel = onCancel;
    this.olderBtn = olderBtn;
    this.info = info;
    this.onSelect = onSelect;
    this.items = [];
    this.nextBefore = null;
    this.selected = null;
    this.generation = 0;
    statusFilter.addEventListener("change", () => this.reset());
    queueFilter.addEventListener("change", () => this.reset());
    mineFilter.addEventListener("change", () => this.reset());
    // Typed filters apply on Enter or when the field is left, not at every key.
    ownerFilter.addEventListener("change", () => this.reset());
    projectFilter.addEventListener("change", () => this.reset());
    tagFilter.addEventListener("change", () => this.reset());
    compareBtn.addEventListener("click", () => onCompare([...this.picked].sort((a, b) => a - b)));
    olderBtn.addEventListener("click", () => this.older());
  }

  filters() {
    return {
      status: this.statusFilter.value,
      queue: this.queueFilter.value,
      // "mine" wins over a typed owner.
      owner: this.mineFilter.checked ? "me" : this.ownerFilter.value.trim(),
      project: this.projectFilter.value.trim(),
      tag: this.tagFilter.value.trim(),
    };
  }

  async reset() {
    this.items = [];
    this.nextBefore = null;
    this.generation += 1;
    await this.refresh();
  }

  // Re-read the newest jobs (as many as are shown, up to MAX_REFRESH); older pages stay as loaded.
  async refresh() {
    const generation = this.generation;
    const limit = Math.min(MAX_REFRESH, Math.max(PAGE, this.items.length));
    const page = await api.get(`/api/jobs${query({ ...this.filters(), limit })}`);
    if (generation !== this.generation) return;
    const fresh = page.items;
    if (page.next_before !== null && fresh.length) {
      const oldest = fresh[fresh.length - 1].id;
      const kept = this.items.filter((j) => j.id < oldest);
      this.items = fresh.concat(kept);
      if (!kept.length) this.nextBefore = page.next_before;
    } else {
      this.items = fresh;
      this.nextBefore = page.next_before;
    }
    this.render();
  }

  async older() {
    if (this.nextBefore === null) return;
    const generation = this.generation;
    this.olderBtn.disabled = true;
    try {
      const page = await api.get(`/api/jobs${query({ ...this.filters(), limit: PAGE, before: this.nextBefore })}`);
      if (generation !== this.generation) return;
      const known = new Set(this.items.map((j) => j.id));
      this.items = this.items.concat(page.items.filter((j) => !known.has(j.id)));
      this.nextBefore = page.next_before;
      this.render();
    } finally {
      this.olderBtn.disabled = false;
    }
  }

  cancelButton(job) {
    const button = el("button", { type: "button", class: "small danger cancel", title: `Cancel job #${job.id}` }, "Cancel");
    if (job.cancel_requested) button.disabled = true;
    button.addEventListener("click", async (ev) => {
      ev.stopPropagation(); // the row's own click opens the job
      button.disabled = true;
      await this.onCancel(job.id);
    });
    button.addEventListener("keydown", (ev) => ev.stopPropagation());
    return button;
  }

  forget() {
    this.items = [];
    this.nextBefore = null;
    this.selected = null;
    this.generation += 1;
    this.mineFilter.checked = false;
    this.ownerFilter.value = "";
    this.projectFilter.value = "";
    this.tagFilter.value = "";
    this.picked.clear();
    this.syncCompare();
    fill(this.tbody);
  }

  select(id) {
    this.selected = id;
    for (const row of this.tbody.rows) row.classList.toggle("selected", Number(row.dataset.id) === id);
  }

  pickBox(job) {
    const box = el("input", { type: "checkbox", class: "pick", title: `Compare job #${job.id}`, checked: this.picked.has(job.id) });
    box.addEventListener("click", (ev) => ev.stopPropagation()); // the row's own click opens the job
    box.addEventListener("keydown", (ev) => ev.stopPropagation());
    box.addEventListener("change", () => {
      if (box.checked) this.picked.add(job.id);
      else this.picked.delete(job.id);
      this.syncCompare();
    });
    return box;
  }

  syncCompare() {
    const n = this.picked.size;
    this.compareBtn.textContent = n ? `Compare selected (${n})` : "Compare selected";
    this.compareBtn.disabled = n < COMPARE_MIN || n > COMPARE_MAX;
    this.compareBtn.title = n > COMPARE_MAX ? `at most ${COMPARE_MAX} jobs at once` : `pick ${COMPARE_MIN} to ${COMPARE_MAX} jobs`;
  }

  render() {
    const rows = this.items.map((job) => {
      const name = job.name || (job.spec.recipe ? job.spec.recipe : (job.spec.command || []).join(" "));
      const row = el(
        "tr",
        { "data-id": job.id, class: job.id === this.selected ? "selected" : "", tabindex: "0" },
        el("td", { class: "pick-cell" }, this.pickBox(job)),
        el("td", { class: "num" }, `#${job.id}`),
        el("td", { class: "name", title: name }, name),
        el("td", { class: "owner" }, job.owner || el("span", { class: "muted" }, "–")),
        el("td", { class: "project" }, job.project, (job.tags || []).map((t) => el("span", { class: "tag" }, t))),
        el("td", {}, badge(job.status), job.cancel_requested && job.status === "running" ? el("span", { class: "muted" }, " cancelling") : null,
          waitReason(job)),
        el("td", {}, job.queue),
        el("td", { class: "num" }, String(job.priority)),
        el("td", { class: "progress-cell" }, progressBar(job.progress)),
        el("td", { class: "metrics" }, valMetrics(job.metrics)),
        el("td", { class: "hide-narrow" }, job.node || ""),
        el("td", { class: "hide-narrow", title: job.created_at }, fmtTime(job.created_at)),
        el("td", { class: "hide-narrow num" }, fmtDuration(job.started_at, job.finished_at)),
        el("td", { class: "row-actions" }, mayCancel(job) ? this.cancelButton(job) : null),
      );
      const open = () => this.onSelect(job.id);
      row.addEventListener("click", open);
      row.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          open();
        }
      });
      return row;
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 14, class: "empty" }, "No jobs match.")));
    fill(this.tbody, rows);
    this.olderBtn.hidden = this.nextBefore === null;
    this.info.textContent = `${this.items.length} shown`;
    this.syncCompare();
  }
}

// Under a queued job's badge: why it has not started, without the "waiting: " the badge implies.
// One line, cut by CSS; the whole sentence is its title and in the job's detail.
function waitReason(job) {
  if (job.status !== "queued" || !job.wait_reason) return null;
  return el("div", { class: "muted wait-reason", title: job.wait_reason }, job.wait_reason.replace(/^waiting: /, ""));
}

// Counts by status for the header: one small query per status; "500+" past one page.
export async function statusCounts() {
  const out = {};
  await Promise.all(
    STATUSES.map(async (status) => {
      const page = await api.get(`/api/jobs${query({ status, limit: MAX_REFRESH })}`);
      out[status] = page.next_before === null ? String(page.items.length) : `${MAX_REFRESH}+`;
    }),
  );
  return out;
}
