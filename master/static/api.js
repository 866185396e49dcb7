// Talking to the master's REST API, and small DOM helpers that never parse HTML.

export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

// Called with the error when the master answers 401 to anything but a login: the session has
// ended (logged out elsewhere, expired, user disabled) and the dashboard shows its login page.
let onSignedOut = null;
export function whenSignedOut(fn) {
  onSignedOut = fn;
}

// `json` goes as JSON, `form` as a URL-encoded form (the login), `body` as raw bytes (uploads).
// The session cookie rides along on same-origin requests; the browser adds the Origin header to
// every changing one, which the master requires of cookie-authenticated requests.
async function request(method, path, { body, json, form } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = new URLSearchParams(form);
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/octet-stream";
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach the master: ${err.message}`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  // /api/health answers 503 with a useful body; callers that want it read `data`.
  if (!response.ok && !(data && data.status === "degraded")) {
    const message = (data && data.message) || `${response.status} ${response.statusText || "error"}`;
    const error = new ApiError(response.status, message, data && data.field);
    if (response.status === 401 && form === undefined && onSignedOut) onSignedOut(error);
    throw error;
  }
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, json) => request("POST", path, { json }),
  patch: (path, json) => request("PATCH", path, { json }),
  del: (path) => request("DELETE", path),
  form: (path, fields) => request("POST", path, { form: fields }),
  upload: (path, body) => request("POST", path, { body }),
};

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// el("td", {class: "x", title: "y"}, "text", childNode, ...): text children become text nodes.
// `style` takes an object set through the CSSOM (node.style), which the Content-Security-Policy
// allows; a style="..." attribute it would block.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function fill(node, ...children) {
  clear(node);
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

export function badge(status) {
  return el("span", { class: `badge badge-${String(status).replace(/[^a-z]/g, "")}` }, status);
}

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 && i ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
  if (Number.isNaN(d.getTime())) return String(iso);
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return d.toDateString() === now.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

export function fmtDuration(startIso, endIso) {
  if (!startIso) return "";
  const parse = (s) => new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : `${s}Z`).getTime();
  const ms = (endIso ? parse(endIso) : Date.now()) - parse(startIso);
  if (!(ms >= 0)) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function fmtNum(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return String(v ?? "");
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Number(v.toFixed(4)));
}

// The val_* metrics a job reported last, e.g. "val_loss 0.1234 · val_acc 0.9500".
export function valMetrics(metrics) {
  const keys = Object.keys(metrics || {}).filter((k) => k.startsWith("val")).sort();
  return keys.map((k) => `${k} ${fmtNum(metrics[k])}`).join(" · ");
}

export function progressBar(progress) {
  const epoch = progress && progress.epoch;
  const max = progress && progress.max_epochs;
  if (epoch === undefined || epoch === null) return el("span", { class: "muted" }, "–");
  if (!max) return el("span", {}, `epoch ${epoch}`);
  // Workers count epochs from 1: "epoch 3 of 10" is the third (running or done).
  const done = Math.min(Number(epoch), Number(max));
  const pct = Math.max(0, Math.min(100, (100 * done) / Number(max)));
  return el(
    "div",
    { class: "progress", title: `epoch ${epoch} of ${max}` },
    el("div", { class: "progress-fill", style: { width: `${pct.toFixed(1)}%` } }),
    el("span", { class: "progress-label" }, `${done}/${max}`),
  );
}
