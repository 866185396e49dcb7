// The re-run form: a job's spec, prefilled and editable (hyperparameters key by key, epochs,
// priority, devices, tags); only what changed is sent (POST /api/jobs/{id}/rerun), and the new job
// records which one it came from.

import { api, el, fill } from "./api.js";

// A value as it is typed: strings bare, anything else (numbers, booleans, lists) as JSON.
const typed = (v) => (typeof v === "string" ? v : JSON.stringify(v));

// What a typed value means: JSON where it parses (0.01, true, [1, 2], null), else the text.
function parsed(text) {
  const s = text.trim();
  try {
    return JSON.parse(s);
  } catch {
    return s;
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const tagList = (text) => text.split(/[\s,]+/).filter(Boolean);

export class RerunForm {
  constructor(root) {
    this.root = root;
    this.request = 0;
  }

  close() {
    this.request += 1;
    fill(this.root);
  }

  async open(jobId) {
    const request = ++this.request;
    fill(this.root, el("h2", {}, `Re-run job #${jobId}`), el("p", { class: "muted" }, "Loading…"));
    let job;
    try {
      job = await api.get(`/api/jobs/${jobId}`);
    } catch (err) {
      if (request === this.request) fill(this.root, el("h2", {}, `Re-run job #${jobId}`), el("p", { class: "error", role: "alert" }, err.message));
      return;
    }
    if (request !== this.request) return;
    if (job.details_hidden) {
      fill(this.root, el("h2", {}, `Re-run job #${jobId}`), el("p", { class: "muted" }, "Its spec is visible to its owner and admins only."));
      return;
    }
    this.render(job);
  }

  render(job) {
    const spec = job.spec;
    const hyper = spec.hyperparameters || {};
    const hyperInputs = Object.keys(hyper).sort().map((key) => ({
      key,
      input: el("input", { name: `hp.${key}`, value: typed(hyper[key]), spellcheck: "false" }),
    }));
    const newKey = el("input", { name: "new-key", placeholder: "new hyperparameter" });
    const newValue = el("input", { name: "new-value", placeholder: "its value" });
    const number = (name, value, attrs) => el("input", { name, type: "number", value: value ?? "", ...attrs });
    const fields = {
      max_epochs: number("max_epochs", spec.max_epochs, { min: 1 }),
      priority: number("priority", spec.priority, { min: 0, max: 9 }),
      devices: number("devices", spec.devices, { min: 1, max: 64 }),
    };
    const tags = el("input", { name: "tags", value: (spec.tags || []).join(", "), placeholder: "e.g. baseline, lr-study" });
    const result = el("span", { class: "result", role: "status", hidden: true });
    const button = el("button", { type: "submit" }, "Submit re-run");
    const form = el("form", { id: "rerun-form", class: "form", autocomplete: "off" },
      el("fieldset", { class: "hyper" }, el("legend", {}, "hyperparameters (a value of null removes the key)"),
        hyperInputs.map((h) => el("label", {}, h.key, h.input)),
        el("div", { class: "row" }, el("label", {}, "add", newKey), el("label", {}, "value", newValue))),
      el("div", { class: "row" },
        el("label", {}, "epochs", fields.max_epochs),
        el("label", {}, "priority", fields.priority),
        el("label", {}, "devices", fields.devices)),
      el("label", {}, "tags (comma-separated)", tags),
      el("div", { class: "row" }, button, el("a", { href: `#job-${job.id}` }, "Back to the job"), result),
    );
    const show = (text, ok) => {
      result.hidden = !text;
      result.className = `result ${ok ? "ok" : "error"}`;
      result.textContent = text;
    };
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const changes = {};
      const hp = {};
      for (const h of hyperInputs) {
        const v = parsed(h.input.value);
        if (!same(v, hyper[h.key])) hp[h.key] = v;
      }
      if (newKey.value.trim()) hp[newKey.value.trim()] = parsed(newValue.value);
      if (Object.keys(hp).length) changes.hyperparameters = hp;
      for (const [name, input] of Object.entries(fields)) {
        if (input.value !== "" && Number(input.value) !== spec[name]) changes[name] = Number(input.value);
      }
      if (!same(tagList(tags.value), spec.tags || [])) changes.tags = tagList(tags.value);
      button.disabled = true;
      show("Submitting…", true);
      try {
        const made = await api.post(`/api/jobs/${job.id}/rerun`, { changes });
        show(`Submitted job #${made.id}.`, true);
        location.hash = `#job-${made.id}`;
      } catch (err) {
        show(`Re-run refused: ${err.message}`, false);
      } finally {
        button.disabled = false;
      }
    });
    fill(
      this.root,
      el("div", { class: "card-head" }, el("h2", {}, `Re-run job #${job.id}${job.name ? ` · ${job.name}` : ""}`)),
      el("p", { class: "muted" }, `The new job runs ${spec.recipe ? `recipe ${spec.recipe}` : "the same command"} on queue ${job.queue} as yours, and records that it re-runs #${job.id}.`),
      form,
    );
  }
}
