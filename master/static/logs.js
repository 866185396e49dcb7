// Live job log: Server-Sent Events from /api/jobs/{id}/logs/stream into a capped <pre>-like view.

import { el } from "./api.js";

export const MAX_LINES = 20000;

export class LogView {
  constructor(container, jobId) {
    this.jobId = jobId;
    this.lines = 0;
    this.dropped = 0;
    this.received = 0;
    this.attempt = null;
    this.follow = true;
    this.note = el("div", { class: "log-note", hidden: true });
    this.body = el("div", { class: "log-body" });
    this.status = el("span", { class: "muted" }, "connecting…");
    this.box = el("div", { class: "log", tabindex: "0" }, this.note, this.body);
    this.followBtn = el("button", { type: "button", class: "small", hidden: true, onclick: () => this.jump() }, "↓ follow");
    container.append(el("div", { class: "log-head" }, this.status, this.followBtn), this.box);
    this.box.addEventListener("scroll", () => {
      this.follow = this.atBottom();
      this.followBtn.hidden = this.follow;
    });
    this.open();
  }

  atBottom() {
    return this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 8;
  }

  jump() {
    this.follow = true;
    this.followBtn.hidden = true;
    this.box.scrollTop = this.box.scrollHeight;
  }

  open() {
    this.source = new EventSource(`/api/jobs/${encodeURIComponent(this.jobId)}/logs/stream`);
    this.source.addEventListener("open", () => {
      this.status.textContent = "live";
    });
    this.source.addEventListener("log", (ev) => this.onLog(JSON.parse(ev.data)));
    this.source.addEventListener("end", (ev) => {
      const data = JSON.parse(ev.data);
      this.close();
      this.status.textContent = `job ${data.status}; log complete (${this.received.toLocaleString()} lines)`;
    });
    this.source.addEventListener("error", () => {
      // EventSource reconnects by itself, resuming from the last event id it saw.
      if (this.source && this.source.readyState !== EventSource.CLOSED) this.status.textContent = "reconnecting…";
      else if (this.source) this.status.textContent = "disconnected";
    });
  }

  onLog(batch) {
    const follow = this.follow || this.atBottom();
    const frag = document.createDocumentFragment();
    if (batch.attempt !== this.attempt) {
      this.attempt = batch.attempt;
      frag.append(el("div", { class: "log-attempt" }, `── attempt ${batch.attempt} ──`));
      this.lines += 1;
    }
    let number = batch.first;
    // Only the newest MAX_LINES of a huge batch can survive the cap; skip building the rest.
    const lines = batch.lines || [];
    this.received += lines.length;
    const skip = Math.max(0, lines.length - MAX_LINES);
    this.dropped += skip;
    number += skip;
    for (let i = skip; i < lines.length; i += 1) {
      frag.append(el("div", { class: "log-line", "data-n": number }, lines[i]));
      number += 1;
    }
    this.lines += lines.length - skip;
    this.body.append(frag);
    this.trim();
    if (follow) this.box.scrollTop = this.box.scrollHeight;
  }

  trim() {
    let excess = this.lines - MAX_LINES;
    const height = this.box.scrollHeight;
    while (excess > 0 && this.body.firstChild) {
      this.body.removeChild(this.body.firstChild);
      excess -= 1;
      this.lines -= 1;
      this.dropped += 1;
    }
    if (!this.dropped) return;
    this.note.hidden = false;
    this.note.textContent = `${this.dropped.toLocaleString()} older lines not shown to keep the view fast; it keeps the newest ${MAX_LINES.toLocaleString()}.`;
    // Keep the reader's place when they have scrolled up.
    if (!this.follow) this.box.scrollTop -= height - this.box.scrollHeight;
  }

  close() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }
}
