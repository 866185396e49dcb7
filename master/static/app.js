// trainfarm dashboard: wires the panels together and keeps them fresh.

import { api, badge, el, fill } from "./api.js";
import { JobDetail } from "./detail.js";
import { refreshDatasets, refreshNodes, setupSubmit, setupUpload } from "./forms.js";
import { JobsTable, STATUSES, statusCounts } from "./jobs.js";

const $ = (id) => document.getElementById(id);
const JOBS_EVERY_MS = 2000;
const SLOW_EVERY_MS = 10000;

const jobs = new JobsTable({
  tbody: $("jobs-body"),
  statusFilter: $("filter-status"),
  queueFilter: $("filter-queue"),
  olderBtn: $("jobs-older"),
  info: $("jobs-info"),
  onSelect: (id) => selectJob(id),
});

const detail = new JobDetail($("detail"), {
  onChange: () => refreshJobs(),
  onClose: () => {
    jobs.select(null);
    setHash(null);
  },
});

function setHash(id) {
  history.replaceState(null, "", id === null ? location.pathname + location.search : `#job-${id}`);
}

function selectJob(id) {
  if (detail.jobId === id) return;
  jobs.select(id);
  setHash(id);
  detail.open(id);
  $("detail").scrollIntoView({ behavior: "smooth", block: "start" });
}

function showBanner(text) {
  const banner = $("banner");
  banner.hidden = !text;
  banner.textContent = text || "";
}

async function refreshJobs() {
  try {
    await jobs.refresh();
    showBanner("");
  } catch (err) {
    showBanner(`Jobs: ${err.message}`);
  }
}

async function refreshHealth() {
  const box = $("health");
  try {
    const h = await api.get("/api/health");
    const parts = Object.entries(h).filter(([k]) => k !== "status");
    const bad = parts.filter(([, v]) => v !== "ok");
    box.className = `health ${h.status === "ok" ? "ok" : "bad"}`;
    box.title = parts.map(([k, v]) => `${k}: ${v}`).join("\n");
    box.textContent = h.status === "ok" ? "farm healthy" : `degraded: ${bad.map(([k]) => k).join(", ")}`;
  } catch (err) {
    box.className = "health bad";
    box.title = err.message;
    box.textContent = "master unreachable";
  }
}

async function refreshCounts() {
  try {
    const counts = await statusCounts();
    fill($("counts"), STATUSES.map((s) => el("span", { class: "count" }, badge(s), ` ${counts[s]}`)));
  } catch {
    // the health badge already says when the master is unreachable
  }
}

async function refreshSlow() {
  await Promise.all([
    refreshHealth(),
    refreshCounts(),
    refreshNodes($("nodes-body"), $("nodes-info")).catch((err) => showBanner(`Nodes: ${err.message}`)),
    refreshDatasets($("datasets-body"), $("submit-form").elements.datasets).catch((err) => showBanner(`Datasets: ${err.message}`)),
  ]);
}

// One timer chain per cadence; a slow answer delays the next tick instead of piling requests up.
function every(ms, fn) {
  const tick = async () => {
    if (!document.hidden) await fn();
    setTimeout(tick, ms);
  };
  tick();
}

setupUpload($("upload-form"), () => refreshDatasets($("datasets-body"), $("submit-form").elements.datasets));
setupSubmit($("submit-form"), async (id) => {
  await refreshJobs();
  refreshCounts();
  selectJob(id);
});

$("refresh-now").addEventListener("click", () => {
  refreshJobs();
  refreshSlow();
  detail.refresh();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refreshJobs();
});

every(JOBS_EVERY_MS, async () => {
  await refreshJobs();
  await detail.refresh();
});
every(SLOW_EVERY_MS, refreshSlow);

// A link like /#job-12 opens that job, on load and when the hash changes.
function openFromHash() {
  const match = /^#job-(\d+)$/.exec(location.hash);
  if (match) selectJob(Number(match[1]));
}
window.addEventListener("hashchange", openFromHash);
openFromHash();
