// Nodes and datasets tables, the dataset upload form and the job submission form.

import { api, el, fill, fmtBytes, fmtTime, query } from "./api.js";

function showResult(node, text, ok) {
  node.hidden = !text;
  node.className = `result ${ok ? "ok" : "error"}`;
  node.textContent = text;
}

function gpuText(gpu) {
  if (gpu === null || typeof gpu !== "object") return String(gpu);
  const name = gpu.name || gpu.model || `gpu ${gpu.index ?? ""}`.trim();
  const mem = gpu.memory_total ?? gpu.memory;
  return mem ? `${name} (${typeof mem === "number" ? fmtBytes(mem) : mem})` : name;
}

export async function refreshNodes(tbody, countEl) {
  const nodes = await api.get("/api/nodes");
  const online = nodes.filter((n) => n.online).length;
  countEl.textContent = `${online}/${nodes.length} online`;
  const rows = nodes.map((n) => {
    const info = n.info || {};
    const gpus = Array.isArray(info.gpus) ? info.gpus : [];
    const mem = info.memory_total
      ? `${fmtBytes(info.memory_available)} free of ${fmtBytes(info.memory_total)}`
      : "";
    // An online node that takes no jobs (its disk is low, say) says why.
    const paused = n.online && info.paused ? String(info.paused) : "";
    const state = paused ? `paused: ${paused}` : n.online ? "online" : "offline";
    return el("tr", { class: paused ? "paused" : "" },
      el("td", {},
        el("span", { class: `dot ${paused ? "paused" : n.online ? "on" : "off"}`, title: state }), n.name,
        paused ? el("div", { class: "muted node-paused" }, state) : null),
      el("td", {}, (n.queues || []).join(", ")),
      el("td", { class: "num" }, info.cpu_count ?? ""),
      el("td", {}, mem),
      el("td", {}, gpus.length ? gpus.map(gpuText).join("; ") : el("span", { class: "muted" }, "none")),
      el("td", { class: "hide-narrow", title: n.last_seen }, fmtTime(n.last_seen)),
    );
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No node has reported in yet.")));
  fill(tbody, rows);
}

export async function refreshDatasets(tbody, select) {
  const datasets = await api.get("/api/datasets");
  const rows = datasets.map((d) =>
    el("tr", {},
      el("td", {}, d.name),
      el("td", { class: "num" }, fmtBytes(d.size)),
      el("td", {}, el("code", { title: d.sha256 }, (d.sha256 || "").slice(0, 12))),
      el("td", { class: "hide-narrow", title: d.created_at }, fmtTime(d.created_at)),
    ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 4, class: "empty" }, "No datasets uploaded yet.")));
  fill(tbody, rows);
  // Keep what the user picked in the submit form.
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  fill(select, datasets.map((d) => el("option", { value: d.name, selected: chosen.has(d.name) }, d.name)));
}

export function setupUpload(form, onDone) {
  const file = form.elements.file;
  const name = form.elements.name;
  const result = form.querySelector(".result");
  file.addEventListener("change", () => {
    if (file.files.length && !name.value) name.value = file.files[0].name.replace(/[^A-Za-z0-9._-]/g, "_");
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!file.files.length) return showResult(result, "Choose a file to upload.", false);
    const dsName = name.value.trim() || file.files[0].name;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    showResult(result, `Uploading ${dsName}…`, true);
    try {
      const overwrite = form.elements.overwrite.checked ? "true" : undefined;
      const ds = await api.upload(`/api/datasets${query({ name: dsName, overwrite })}`, file.files[0]);
      showResult(result, `Uploaded ${ds.name} (${fmtBytes(ds.size)}).`, true);
      form.reset();
      onDone();
    } catch (err) {
      showResult(result, `Upload failed: ${err.message}`, false);
    } finally {
      button.disabled = false;
    }
  });
}

class FieldError extends Error {
  constructor(field, message) {
    super(`${field}: ${message}`);
    this.field = field;
  }
}

export function parseCommand(text) {
  const s = text.trim();
  if (!s) throw new FieldError("command", "enter a command");
  if (s.startsWith("[")) {
    let argv;
    try {
      argv = JSON.parse(s);
    } catch (err) {
      throw new FieldError("command", `not valid JSON: ${err.message}`);
    }
    if (!Array.isArray(argv) || !argv.length || argv.some((a) => typeof a !== "string")) {
      throw new FieldError("command", "a JSON command must be a non-empty array of strings");
    }
    return argv;
  }
  return s.split(/\s+/);
}

function parseHyper(text) {
  const s = text.trim();
  if (!s) return {};
  let value;
  try {
    value = JSON.parse(s);
  } catch (err) {
    throw new FieldError("hyperparameters", `not valid JSON: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new FieldError("hyperparameters", 'must be a JSON object, e.g. {"target": "label"}');
  }
  return value;
}

function buildSpec(f) {
  const spec = {};
  if (f.name.value.trim()) spec.name = f.name.value.trim();
  if (f.kind.value === "command") spec.command = parseCommand(f.command.value);
  else spec.recipe = f.recipe.value;
  spec.datasets = [...f.datasets.selectedOptions].map((o) => o.value);
  spec.hyperparameters = parseHyper(f.hyperparameters.value);
  spec.queue = f.queue.value;
  for (const key of ["devices", "max_epochs", "priority"]) {
    if (f[key].value !== "") spec[key] = Number(f[key].value);
  }
  return spec;
}

export function setupSubmit(form, onSubmitted) {
  const result = form.querySelector(".result");
  const syncKind = () => {
    const isCommand = form.elements.kind.value === "command";
    form.querySelector(".when-recipe").hidden = isCommand;
    form.querySelector(".when-command").hidden = !isCommand;
  };
  for (const radio of form.querySelectorAll("input[name=kind]")) radio.addEventListener("change", syncKind);
  syncKind();
  const mark = (field) => {
    for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
    const top = field ? String(field).split(/[.[]/)[0] : "";
    const input = top && form.elements[top];
    if (input && input.classList) {
      input.classList.add("invalid");
      input.focus();
    }
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    mark(null);
    let spec;
    try {
      spec = buildSpec(form.elements);
    } catch (err) {
      mark(err.field);
      return showResult(result, err.message, false);
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await api.post("/api/jobs", spec);
      showResult(result, `Submitted job #${job.id}.`, true);
      onSubmitted(job.id);
    } catch (err) {
      mark(err.field);
      showResult(result, err.status === 422 ? `Rejected: ${err.message}` : `Submit failed: ${err.message}`, false);
    } finally {
      button.disabled = false;
    }
  });
}
