// The admins' users page: every user with their role and state, a role picker, disable/enable,
// and a form to add a user. The master refuses what would leave the farm without an active admin
// (409); its message is shown as is.

import { api, el, fill, fmtTime } from "./api.js";
import { me } from "./session.js";

const ROLES = ["admin", "member", "viewer"];

function showResult(node, text, ok) {
  node.hidden = !text;
  node.className = `result ${ok ? "ok" : "error"}`;
  node.textContent = text;
}

export class UsersPage {
  constructor({ tbody, info, message, form }) {
    this.tbody = tbody;
    this.info = info;
    this.message = message;
    this.form = form;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.create();
    });
  }

  say(text) {
    this.message.hidden = !text;
    this.message.textContent = text || "";
  }

  async refresh() {
    let users;
    try {
      users = await api.get("/api/users");
    } catch (err) {
      this.say(`Users: ${err.message}`);
      return;
    }
    const active = users.filter((u) => !u.disabled).length;
    this.info.textContent = `${users.length} users, ${active} active`;
    fill(this.tbody, users.map((u) => this.row(u)));
  }

  row(user) {
    const self = me.current !== null && user.name === me.current.name;
    const role = el("select", { class: "role", "aria-label": `role of ${user.name}` },
      ROLES.map((r) => el("option", { value: r, selected: r === user.role }, r)));
    role.addEventListener("change", () => this.change(user.name, { role: role.value }));
    const toggle = el("button", { type: "button", class: `small ${user.disabled ? "" : "danger"} toggle` },
      user.disabled ? "Enable" : "Disable");
    toggle.addEventListener("click", () => this.change(user.name, { disabled: !user.disabled }));
    return el("tr", { "data-user": user.name, class: user.disabled ? "disabled" : "" },
      el("td", { class: "user-name" }, user.name, self ? el("span", { class: "muted" }, " (you)") : null),
      el("td", {}, role),
      el("td", { class: "state" }, user.disabled ? "disabled" : "active"),
      el("td", { class: "hide-narrow", title: user.created_at }, fmtTime(user.created_at)),
      el("td", {}, toggle),
    );
  }

  async change(name, patch) {
    this.say("");
    try {
      await api.patch(`/api/users/${encodeURIComponent(name)}`, patch);
    } catch (err) {
      this.say(`${name}: ${err.message}`);
    }
    await this.refresh(); // shows the state the master kept, refused or not
  }

  async create() {
    const f = this.form.elements;
    const result = this.form.querySelector(".result");
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const user = await api.post("/api/users", { name: f.name.value.trim(), role: f.role.value, password: f.password.value });
      showResult(result, `Added ${user.name} (${user.role}).`, true);
      this.form.reset();
      await this.refresh();
    } catch (err) {
      showResult(result, `Not added: ${err.message}`, false);
    } finally {
      button.disabled = false;
    }
  }
}
