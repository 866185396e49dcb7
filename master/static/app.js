// trainfarm dashboard: the login page, then the panels, wired together and kept fresh.

import { api, badge, el, fill, whenSignedOut } from "./api.js";
import { CompareView } from "./compare.js";
import { JobDetail } from "./detail.js";
import { refreshFairshare } from "./fairshare.js";
import { refreshDatasets, refreshNodes, setupSubmit, setupUpload } from "./forms.js";
import { JobsTable, STATUSES, statusCounts } from "./jobs.js";
import { setupLogin } from "./login.js";
import { RerunForm } from "./rerun.js";
import { compareHash, jobIdsParam, parseRoute, VIEWS } from "./router.js";
import { isAdmin, logOut, me, mayWrite, whoAmI } from "./session.js";
import { SweepPage } from "./sweep.js";
import { SweepsList } from "./sweeps.js";
import { UsersPage } from "./users.js";

const $ = (id) => document.getElementById(id);
const JOBS_EVERY_MS = 2000;
const SLOW_EVERY_MS = 10000;

const jobs = new JobsTable({
  tbody: $("jobs-body"),
  statusFilter: $("filter-status"),
  queueFilter: $("filter-queue"),
  mineFilter: $("filter-mine"),
  ownerFilter: $("filter-owner"),
  projectFilter: $("filter-project"),
  tagFilter: $("filter-tag"),
  compareBtn: $("compare-selected"),
  olderBtn: $("jobs-older"),
  info: $("jobs-info"),
  onSelect: (id) => selectJob(id),
  onCancel: (id) => cancelJob(id),
  onCompare: (ids) => {
    location.hash = compareHash(ids);
  },
});

const detail = new JobDetail($("detail"), {
  onChange: () => refreshJobs(),
  onClose: () => {
    jobs.select(null);
    setHash(null);
  },
});

const users = new UsersPage({
  tbody: $("users-body"),
  info: $("users-info"),
  message: $("users-message"),
  form: $("user-form"),
});

const compare = new CompareView($("compare"));
const rerun = new RerunForm($("rerun"));
const sweepPage = new SweepPage($("sweep"));
const sweeps = new SweepsList({
  tbody: $("sweeps-body"),
  statusFilter: $("sweeps-status"),
  projectFilter: $("sweeps-project"),
  info: $("sweeps-info"),
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

async function cancelJob(id) {
  try {
    await api.post(`/api/jobs/${id}/cancel`);
  } catch (err) {
    showBanner(`Cancel job #${id}: ${err.message}`);
  }
  await refreshJobs();
  if (detail.jobId === id) await detail.refresh();
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
    if (err.status !== 401) showBanner(`Jobs: ${err.message}`);
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

const quiet = (what) => (err) => {
  if (err.status !== 401) showBanner(`${what}: ${err.message}`);
};

async function refreshSlow() {
  await Promise.all([
    refreshHealth(),
    refreshCounts(),
    refreshNodes($("nodes-body"), $("nodes-info")).catch(quiet("Nodes")),
    refreshFairshare($("fairshare-queues"), $("fairshare-body"), $("fairshare-info")).catch(quiet("Fair share")),
    refreshDatasets($("datasets-body"), $("submit-form").elements.datasets).catch(quiet("Datasets")),
    $("sweeps-view").hidden ? null : sweeps.refresh().catch(quiet("Sweeps")),
  ]);
}

// The timers of one signed-in session; a new session starts a new generation, and the old one's
// timers stop at their next tick. A slow answer delays the next tick instead of piling requests up.
let generation = 0;
function every(ms, fn) {
  const mine = generation;
  const tick = async () => {
    if (mine !== generation) return;
    if (!document.hidden) await fn();
    if (mine === generation) setTimeout(tick, ms);
  };
  tick();
}

// The view the hash names (router.js): one shows at a time; leaving one stops what it loads.
function showView() {
  const route = parseRoute(location.hash);
  const view = route.view === "users" && !isAdmin() ? "dashboard" : route.view;
  for (const name of VIEWS) $(`${name}-view`).hidden = name !== view;
  $("nav-jobs").classList.toggle("current", view === "dashboard" || view === "compare" || view === "rerun");
  $("nav-sweeps").classList.toggle("current", view === "sweeps" || view === "sweep");
  $("nav-users").classList.toggle("current", view === "users");
  if (view !== "compare") compare.close();
  if (view !== "rerun") rerun.close();
  if (view !== "sweep") sweepPage.close();
  if (view === "users") users.refresh();
  else if (view === "compare") compare.open(jobIdsParam(route.params.get("jobs")), route.params.get("x"));
  else if (view === "rerun") rerun.open(route.id);
  else if (view === "sweeps") sweeps.refresh().catch(quiet("Sweeps"));
  else if (view === "sweep") sweepPage.open(route.id);
  else if (route.jobId !== undefined) selectJob(route.jobId);
}

function startSession(who) {
  generation += 1;
  $("login").hidden = true;
  $("app").hidden = false;
  $("nav").hidden = false;
  $("session-bar").hidden = false;
  const name = who.name || "anyone";
  fill($("whoami"), el("strong", { class: "user" }, name), " ", el("span", { class: "role" }, who.role));
  // With authentication off (TRAINFARM_AUTH_ENABLED=false) there is no session to end.
  $("logout").hidden = !who.auth_enabled;
  $("nav-users").hidden = !isAdmin() || !who.auth_enabled;
  $("submit").hidden = !mayWrite();
  $("upload-form").hidden = !mayWrite();
  showView();
  every(JOBS_EVERY_MS, async () => {
    await refreshJobs();
    await detail.refresh();
    if (!$("sweep-view").hidden) await sweepPage.refresh();
  });
  every(SLOW_EVERY_MS, refreshSlow);
}

function showLogin(message) {
  generation += 1; // stops the session's timers
  detail.close(false); // and its live log
  compare.close();
  rerun.close();
  sweepPage.close();
  jobs.forget();
  $("app").hidden = true;
  $("nav").hidden = true;
  $("session-bar").hidden = true;
  fill($("counts"));
  showBanner(message || "");
  $("login").hidden = false;
  $("login-form").elements.username.focus();
  refreshHealth();
}

// Any 401 while signed in means the session is over (expired, revoked, user disabled).
whenSignedOut((err) => {
  if (me.current !== null) {
    me.current = null;
    showLogin(`Signed out: ${err.message}`);
  }
});

setupLogin($("login-form"), async (who) => {
  showBanner("");
  startSession(who);
});

$("logout").addEventListener("click", async () => {
  try {
    await logOut();
  } catch (err) {
    // A 401 means the session had ended already: the login page is the right place either way.
    if (err.status !== 401) {
      showBanner(`Log out: ${err.message}`);
      return;
    }
  }
  showLogin("");
});

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
  if (!$("users-view").hidden) users.refresh();
  if (!$("sweep-view").hidden) sweepPage.refresh();
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && me.current !== null) refreshJobs();
});
window.addEventListener("hashchange", () => {
  if (me.current !== null) showView();
});

async function boot() {
  let who;
  try {
    who = await whoAmI();
  } catch (err) {
    showLogin(`The master does not answer: ${err.message}`);
    return;
  }
  if (who === null) showLogin("");
  else startSession(who);
}
boot();
