// Which view a location hash names. The hash is the dashboard's whole address, so every view can
// be bookmarked and reloaded:
//   #job-12                     the dashboard with job 12 open
//   #users                      the users page (admins)
//   #compare?jobs=12,14&x=epoch  jobs overlaid
//   #sweeps, #sweep-3           the sweeps, one sweep
//   #rerun-12                   the re-run form for job 12

export const VIEWS = ["dashboard", "users", "compare", "sweeps", "sweep", "rerun"];

export function parseRoute(hash) {
  const [path, search = ""] = String(hash || "").replace(/^#/, "").split("?", 2);
  const params = new URLSearchParams(search);
  let match = /^job-(\d+)$/.exec(path);
  if (match) return { view: "dashboard", jobId: Number(match[1]), params };
  match = /^(sweep|rerun)-(\d+)$/.exec(path);
  if (match) return { view: match[1], id: Number(match[2]), params };
  if (path === "users" || path === "sweeps" || path === "compare") return { view: path, params };
  return { view: "dashboard", params };
}

// "#compare?jobs=12,14&x=step" for these jobs.
export function compareHash(jobIds, x = "step") {
  return `#compare?jobs=${jobIds.join(",")}&x=${encodeURIComponent(x)}`;
}

// Job ids from "12,14,15": whole positive numbers, each once, in the order given.
export function jobIdsParam(text) {
  const ids = String(text || "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => /^\d+$/.test(s))
    .map(Number)
    .filter((n) => n > 0);
  return [...new Set(ids)];
}
