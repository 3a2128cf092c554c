"use strict";
// The login form: posts the credentials as JSON; the answer sets the session cookie.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    const value = (id) => document.getElementById(id).value;
    try {
      const r = await fetch("/dashboard/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ username: value("username"), password: value("password"), token: value("token") }),
        credentials: "same-origin",
      });
      if (r.ok) {
        location.href = "/dashboard/#/overview";
        return;
      }
      const body = await r.json().catch(() => ({}));
      error.textContent = body.error || `login failed (${r.status})`;
    } catch (e) {
      error.textContent = `cannot reach the broker: ${e.message}`;
    }
  });
});
