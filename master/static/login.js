// The login page: user name and password traded for the dashboard's session cookie.

import { logIn } from "./session.js";

export function setupLogin(form, onLoggedIn) {
  const message = form.querySelector(".result");
  const button = form.querySelector("button[type=submit]");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    message.hidden = true;
    button.disabled = true;
    try {
      const who = await logIn(form.elements.username.value.trim(), form.elements.password.value);
      form.elements.password.value = "";
      await onLoggedIn(who);
    } catch (err) {
      // The master's own words: a wrong name or password (401), or too many attempts (429).
      message.textContent = err.status === 429 ? `Too many attempts: ${err.message}` : err.message;
      message.hidden = false;
      form.elements.password.select();
    } finally {
      button.disabled = false;
    }
  });
}
