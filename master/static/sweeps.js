// The sweeps list (GET /api/sweeps): newest first, filtered by status and project.

import { api, badge, el, fill, fmtNum, fmtTime, query } from "./api.js";

const PAGE = 100;

// "3 complete · 1 pruned" from {state: n}.
export function countsText(counts) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n).map(([state, n]) => `${n} ${state}`);
  return parts.length ? parts.join(" · ") : "none yet";
}

// "val_acc ↑"; "–" for someone else's sweep whose spec the farm keeps to its owner.
export const objectiveText = (objective) => (objective ? `${objective.metric} ${objective.direction === "maximize" ? "↑" : "↓"}` : "–");

export class SweepsList {
  constructor({ tbody, statusFilter, projectFilter, info }) {
    this.tbody = tbody;
    this.statusFilter = statusFilter;
    this.projectFilter = projectFilter;
    this.info = info;
    statusFilter.addEventListener("change", () => this.refresh());
    projectFilter.addEventListener("change", () => this.refresh());
  }

  async refresh() {
    const filters = { status: this.statusFilter.value, project: this.projectFilter.value.trim(), limit: PAGE };
    const page = await api.get(`/api/sweeps${query(filters)}`);
    const rows = page.items.map((s) => {
      const row = el("tr", { "data-id": s.id, tabindex: "0" },
        el("td", { class: "num" }, el("a", { href: `#sweep-${s.id}` }, `#${s.id}`)),
        el("td", { class: "name" }, s.name),
        el("td", {}, s.owner || "–"),
        el("td", {}, s.project),
        el("td", {}, badge(s.status)),
        el("td", {}, objectiveText(s.spec.objective)),
        el("td", {}, countsText(s.counts)),
        el("td", { class: "num" }, s.best_value === null ? "–" : `${fmtNum(s.best_value)} (trial ${s.best_trial})`),
        el("td", { class: "hide-narrow", title: s.created_at }, fmtTime(s.created_at)),
      );
      const open = () => {
        location.hash = `#sweep-${s.id}`;
      };
      row.addEventListener("click", open);
      row.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") open();
      });
      return row;
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No sweeps match.")));
    fill(this.tbody, rows);
    this.info.textContent = `${page.items.length} shown${page.next_before === null ? "" : " (newest)"}`;
  }
}
