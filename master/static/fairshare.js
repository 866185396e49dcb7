// The fair share panel: each queue's capacity and use, each user's running devices, caps, decayed
// usage and place in line, as admission last decided them (GET /api/fairshare).

import { api, el, fill, fmtTime } from "./api.js";

// "2/4", or "2/no cap" where the cap is 0.
const ofCap = (value, cap) => `${value}/${cap || "no cap"}`;

function capacityText(q) {
  const parts = [`${q.slots} slots (${q.used_slots} in use)`];
  if (q.gpus) parts.push(`${q.gpus} GPUs (${q.used_devices} in use)`);
  parts.push(`${q.waiting} waiting`, `${q.workers} worker${q.workers === 1 ? "" : "s"}`);
  return parts.join(", ");
}

export async function refreshFairshare(queuesBox, tbody, info) {
  const share = await api.get("/api/fairshare");
  info.textContent = share.decided_at
    ? `decided ${fmtTime(share.decided_at)}${share.preemption ? " · preemption on" : ""}`
    : "not decided yet";
  fill(queuesBox, share.queues.map((q) =>
    el("span", { class: "fairshare-queue", "data-queue": q.queue }, el("strong", {}, q.queue), ` ${capacityText(q)}`)));
  const rows = share.users.map((u) =>
    el("tr", { "data-user": u.user, "data-queue": u.queue },
      el("td", {}, u.user || el("span", { class: "muted" }, "–")),
      el("td", {}, u.queue),
      el("td", { class: "num" }, ofCap(u.running_devices, u.max_devices)),
      el("td", { class: "num" }, ofCap(u.queued, u.max_queued)),
      el("td", { class: "num", title: "device-hours" }, u.usage.toFixed(2)),
      el("td", { class: "num" }, u.position === null ? "–" : String(u.position)),
    ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "Nobody runs or waits.")));
  fill(tbody, rows);
}
