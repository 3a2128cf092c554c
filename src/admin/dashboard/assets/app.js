"use strict";
// The dashboard's shell: the session (user and CSRF token), the API helper that sends the
// token on every change, small DOM builders (text only, never HTML from the broker), and the
// hash router that shows one page at a time and polls it while it is shown.
const App = (() => {
  const pages = {};
  let csrf = "";
  let poll = null;
  let shown = 0;
  // Confirm buttons waiting for their second click: the page is not redrawn under them.
  let armedButtons = 0;

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
    }
    return e;
  }

  async function api(method, path, body) {
    const headers = {};
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) {
      location.href = "/dashboard/login";
      throw new Error("not logged in");
    }
    const text = await r.text();
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
    return { status: r.status, ok: r.ok, data };
  }

  async function call(method, path, body) {
    const r = await api(method, path, body);
    if (!r.ok) throw new Error((r.data && r.data.error) || `${method} ${path}: ${r.status}`);
    return r.data;
  }

  function say(text, error) {
    const m = document.getElementById("message");
    m.textContent = text;
    m.className = error ? "error" : "ok";
  }

  const cell = (v) => (v === null || v === undefined ? "-" : typeof v === "object" ? JSON.stringify(v) : String(v));

  // A table: columns [{ key, label, fmt }], rows of objects, and per row the action buttons.
  function table(columns, rows, actions) {
    const head = el("tr", {}, columns.map((c) => el("th", { text: c.label || c.key })), actions ? el("th", { text: "" }) : null);
    const body = rows.map((r) =>
      el("tr", {}, columns.map((c) => el("td", {}, c.fmt ? c.fmt(r[c.key], r) : cell(r[c.key]))), actions ? el("td", { class: "actions" }, actions(r)) : null),
    );
    if (rows.length === 0) body.push(el("tr", {}, el("td", { class: "muted", colspan: String(columns.length + 1), text: "(none)" })));
    return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
  }

  // A button that asks to be clicked again (within 5 s) before it acts.
  function confirmButton(label, act) {
    let armed = null;
    const b = el("button", { type: "button", class: "danger", text: label });
    const disarm = () => {
      clearTimeout(armed);
      armed = null;
      armedButtons = Math.max(0, armedButtons - 1);
    };
    b.addEventListener("click", async () => {
      if (!armed) {
        b.textContent = `Confirm ${label.toLowerCase()}`;
        armedButtons++;
        armed = setTimeout(() => {
          disarm();
          b.textContent = label;
        }, 5000);
        return;
      }
      disarm();
      b.disabled = true;
      try {
        await act();
      } catch (e) {
        say(e.message, true);
      }
      b.disabled = false;
      b.textContent = label;
    });
    return b;
  }

  // A search box that calls `changed` as the user types.
  function search(id, placeholder, changed) {
    return el("input", { id, type: "search", placeholder, class: "search", oninput: (e) => changed(e.target.value.trim().toLowerCase()) });
  }

  const matches = (row, term, keys) => !term || keys.some((k) => cell(row[k]).toLowerCase().includes(term));

  function register(name, page) {
    pages[name] = page;
  }

  async function show() {
    const name = location.hash.replace(/^#\/?/, "") || "overview";
    const page = pages[name] || pages.overview;
    const visit = ++shown;
    clearInterval(poll);
    armedButtons = 0;
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("current", a.dataset.page === name);
    const body = el("div", { class: "page", id: `page-${name}` });
    document.getElementById("view").replaceChildren(el("h1", { text: page.title }), body);
    say("", false);
    try {
      const refresh = await page.render(body);
      if (refresh && visit === shown) {
        poll = setInterval(() => {
          if (armedButtons === 0) refresh().catch((e) => say(e.message, true));
        }, page.every || 3000);
      }
    } catch (e) {
      body.append(el("p", { class: "error", text: e.message }));
    }
  }

  async function start() {
    const r = await fetch("/dashboard/session", { credentials: "same-origin" });
    if (!r.ok) {
      location.href = "/dashboard/login";
      return;
    }
    const s = await r.json();
    csrf = s.csrf;
    document.getElementById("user").textContent = s.open ? "open (loopback, no credentials)" : s.user;
    const out = document.getElementById("logout");
    out.hidden = s.open;
    out.addEventListener("click", async () => {
      await api("POST", "/dashboard/logout");
      location.href = "/dashboard/login";
    });
    window.addEventListener("hashchange", show);
    show();
  }

  document.addEventListener("DOMContentLoaded", start);
  return { el, api, call, say, table, confirmButton, search, matches, register, cell };
})();

// Number formats.
const Fmt = {
  num: (v) => (Math.abs(v) >= 100 ? Math.round(v) : Math.round(v * 10) / 10).toLocaleString("en"),
  bytes(v) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${Math.round(v * 10) / 10} ${units[i]}`;
  },
  duration(s) {
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
  },
  time: (secs) => (secs ? new Date(secs * 1000).toLocaleString() : "-"),
};
