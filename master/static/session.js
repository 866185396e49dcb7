// Who is signed in to the dashboard, and what the page offers them (the master decides; this only
// hides buttons that would be refused).

import { api } from "./api.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);

// {name, role, auth_enabled, job_visibility}, as GET /api/auth/me answers; null when signed out.
export const me = { current: null };

export function isAdmin() {
  return me.current !== null && me.current.role === "admin";
}

// Viewers read; members and admins submit and upload.
export function mayWrite() {
  return me.current !== null && me.current.role !== "viewer";
}

// Admins cancel any job; members their own; viewers none. Finished jobs have nothing to cancel.
export function mayCancel(job) {
  if (TERMINAL.has(job.status) || me.current === null) return false;
  if (isAdmin()) return true;
  return mayWrite() && job.owner !== null && job.owner === me.current.name;
}

// The caller, or null when the master wants credentials (401).
export async function whoAmI() {
  try {
    me.current = await api.get("/api/auth/me");
  } catch (err) {
    if (err.status !== 401) throw err;
    me.current = null;
  }
  return me.current;
}

// Log in with the dashboard's session cookie; throws the master's message (wrong password, 429).
export async function logIn(username, password) {
  me.current = await api.form("/api/auth/session", { username, password });
  return me.current;
}

export async function logOut() {
  try {
    await api.del("/api/auth/session");
  } finally {
    me.current = null;
  }
}
