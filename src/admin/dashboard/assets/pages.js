"use strict";
// The dashboard's pages: each renders into its element and returns what to call to refresh it.
const { el, call, api, table, confirmButton, search, matches, register } = App;

// Overview: counts and rates from /api/v1/stats (counters read without asking the shards),
// two samples a second apart making each rate; static facts from /api/v1/status.
register("overview", {
  title: "Overview",
  every: 1000,
  async render(view) {
    const st = await call("GET", "/api/v1/status");
    view.append(
      el("p", { class: "muted", id: "facts" },
        `ringmq ${st.version} on node ${st.node}, ${st.shards} shard(s), ${st.driver} driver; listeners: `,
        st.listeners.map((l) => `${l.name} ${l.bind}`).join(", ")),
    );
    const cards = el("div", { class: "cards" });
    const card = (id, label) => {
      const v = el("div", { class: "value", id: `card-${id}`, text: "-" });
      cards.append(el("div", { class: "card" }, el("div", { class: "label", text: label }), v));
      return v;
    };
    const c = {
      connections: card("connections", "Connections"),
      sessions: card("sessions", "Sessions"),
      subscriptions: card("subscriptions", "Subscriptions"),
      retained: card("retained", "Retained"),
      msgIn: card("msg-in", "Messages in/s"),
      msgOut: card("msg-out", "Messages out/s"),
      bytesIn: card("bytes-in", "Bytes in/s"),
      bytesOut: card("bytes-out", "Bytes out/s"),
      memory: card("memory", "Memory"),
      uptime: card("uptime", "Uptime"),
    };
    const canvas = (id) => el("canvas", { id, class: "chart" });
    const charts = el("div", { class: "charts" });
    const panel = (title, cv) => charts.append(el("section", { class: "panel" }, el("h2", { text: title }), cv));
    const cMsgs = canvas("chart-messages"), cBytes = canvas("chart-bytes"), cConns = canvas("chart-connections"), cLag = canvas("chart-lag");
    panel("Messages per second", cMsgs);
    panel("Bytes per second", cBytes);
    panel("Connections and sessions", cConns);
    panel("Event loop lag per shard (µs)", cLag);
    const shardBox = el("section", { class: "panel wide" }, el("h2", { text: "Shards" }));
    view.append(cards, charts, shardBox);
    const palette = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
    const msgs = new LineChart(cMsgs, [{ name: "in", color: palette[0] }, { name: "out", color: palette[1] }], Fmt.num);
    const bytes = new LineChart(cBytes, [{ name: "in", color: palette[0] }, { name: "out", color: palette[1] }], Fmt.bytes);
    const conns = new LineChart(cConns, [{ name: "connections", color: palette[2] }, { name: "sessions", color: palette[3] }], Fmt.num);
    const lag = new LineChart(cLag, st.shard_status.map((s, i) => ({ name: `shard ${s.shard}`, color: palette[i % palette.length] })), Fmt.num);
    let prev = null;
    const refresh = async () => {
      const s = await call("GET", "/api/v1/stats");
      const now = performance.now();
      const rate = (k, a, b) => (prev ? Math.max(0, (a[k] - b[k]) / ((now - prev.at) / 1000)) : 0);
      c.connections.textContent = s.connections;
      c.sessions.textContent = s.sessions;
      c.subscriptions.textContent = s.subscriptions;
      c.retained.textContent = s.retained;
      c.memory.textContent = Fmt.bytes(s.memory_resident_bytes);
      c.uptime.textContent = Fmt.duration(s.uptime_secs);
      conns.push([s.connections, s.sessions]);
      lag.push(s.shards.map((x) => x.loop_lag_us));
      if (prev) {
        const r = {
          mi: rate("messages_in", s, prev.s), mo: rate("messages_out", s, prev.s),
          bi: rate("bytes_in", s, prev.s), bo: rate("bytes_out", s, prev.s),
        };
        c.msgIn.textContent = Fmt.num(r.mi);
        c.msgOut.textContent = Fmt.num(r.mo);
        c.bytesIn.textContent = Fmt.bytes(r.bi);
        c.bytesOut.textContent = Fmt.bytes(r.bo);
        msgs.push([r.mi, r.mo]);
        bytes.push([r.bi, r.bo]);
      }
      const loads = s.shards.map((x, i) => rate("messages_in", x, prev ? prev.s.shards[i] : x) + rate("messages_out", x, prev ? prev.s.shards[i] : x));
      const top = Math.max(1, ...loads);
      const bar = (v) => {
        const fill = el("div", { class: "fill" });
        fill.style.width = `${Math.round((100 * v) / top)}%`;
        return el("div", { class: "bar" }, fill, el("span", { text: Fmt.num(v) }));
      };
      const rows = s.shards.map((x, i) => ({ ...x, load: loads[i] }));
      shardBox.replaceChildren(el("h2", { text: "Shards" }), table([
        { key: "shard", label: "Shard" },
        { key: "connections", label: "Connections" },
        { key: "sessions", label: "Sessions" },
        { key: "subscriptions", label: "Subscriptions" },
        { key: "load", label: "Messages/s (in + out)", fmt: bar },
        { key: "loop_lag_us", label: "Loop lag (µs)" },
        { key: "ring_occupancy", label: "Ring occupancy" },
        { key: "dropped", label: "Dropped" },
        { key: "overloaded", label: "Overloaded", fmt: (v) => (v ? "yes" : "no") },
      ], rows));
      prev = { s, at: now };
    };
    await refresh();
    return refresh;
  },
});

// A searchable table: `load` fetches the rows, `columns` and `actions(row, refresh)` draw them,
// the search box (with a count of what it shows) filters on `fields`; `after` goes below the
// table. Loads once and returns the refresh.
async function listPage(view, { searchId, placeholder, fields, columns, load, actions, listId, after = [] }) {
  let term = "";
  let rows = [];
  const list = el("div", listId ? { id: listId } : {});
  const count = el("span", { class: "muted" });
  const draw = () => {
    const shown = rows.filter((r) => matches(r, term, fields));
    count.textContent = `${shown.length} of ${rows.length}`;
    list.replaceChildren(table(columns, shown, actions && ((r) => actions(r, refresh))));
  };
  const refresh = async () => {
    rows = await load();
    draw();
  };
  view.append(el("div", { class: "toolbar" }, search(searchId, placeholder, (t) => { term = t; draw(); }), count), list, ...after);
  await refresh();
  return refresh;
}

const byKeys = (...keys) => (a, b) => keys.reduce((c, k) => c || String(a[k]).localeCompare(String(b[k])), 0);

// Clients: search, show one, kick one.
register("clients", {
  title: "Clients",
  async render(view) {
    const detail = el("section", { class: "panel", id: "client-detail", hidden: "" });
    const showOne = async (id) => {
      const c = await call("GET", `/api/v1/clients/${encodeURIComponent(id)}`);
      detail.hidden = false;
      detail.replaceChildren(el("h2", { text: `Client ${id}` }), table(
        [{ key: "k", label: "Field" }, { key: "v", label: "Value" }],
        Object.entries(c).map(([k, v]) => ({ k, v: Array.isArray(v) ? v.join(", ") : v })),
      ));
    };
    return listPage(view, {
      searchId: "client-search",
      placeholder: "search client id or address",
      fields: ["clientid", "ipaddress"],
      listId: "client-list",
      columns: [
        { key: "clientid", label: "Client id" },
        { key: "connected", label: "Connected", fmt: (v) => (v ? "yes" : "no") },
        { key: "ipaddress", label: "Address" },
        { key: "proto_ver", label: "Protocol" },
        { key: "subscriptions", label: "Subscriptions" },
        { key: "inflight", label: "In flight" },
        { key: "queued", label: "Queued" },
        { key: "dropped", label: "Dropped" },
      ],
      load: async () => (await call("GET", "/api/v1/clients")).sort(byKeys("clientid")),
      actions: (r, again) => [
        el("button", { type: "button", text: "Show", onclick: () => showOne(r.clientid) }),
        confirmButton("Kick", async () => {
          await call("DELETE", `/api/v1/clients/${encodeURIComponent(r.clientid)}`);
          App.say(`kicked ${r.clientid}`);
          await again();
        }),
      ],
      after: [detail],
    });
  },
});

register("subscriptions", {
  title: "Subscriptions",
  async render(view) {
    return listPage(view, {
      searchId: "subscription-search",
      placeholder: "search client id or filter",
      fields: ["clientid", "topic"],
      columns: [{ key: "clientid", label: "Client id" }, { key: "topic", label: "Filter" }, { key: "qos", label: "QoS" }],
      load: async () => (await call("GET", "/api/v1/subscriptions")).sort(byKeys("topic", "clientid")),
      actions: (r, again) => [confirmButton("Unsubscribe", async () => {
        await call("POST", "/api/v1/unsubscribe", { clientid: r.clientid, topic: r.topic });
        await again();
      })],
    });
  },
});

register("topics", {
  title: "Topics",
  async render(view) {
    return listPage(view, {
      searchId: "topic-search",
      placeholder: "search filter",
      fields: ["topic"],
      columns: [{ key: "topic", label: "Filter" }, { key: "subscribers", label: "Subscribers" }],
      load: async () => {
        const [topics, subs] = await Promise.all([call("GET", "/api/v1/topics"), call("GET", "/api/v1/subscriptions")]);
        const n = {};
        for (const s of subs) n[s.topic] = (n[s.topic] || 0) + 1;
        return topics.map((t) => ({ topic: t, subscribers: n[t] || 0 }));
      },
    });
  },
});

register("retained", {
  title: "Retained messages",
  async render(view) {
    const detail = el("section", { class: "panel", id: "retained-detail", hidden: "" });
    return listPage(view, {
      searchId: "retained-search",
      placeholder: "search topic",
      fields: ["topic", "from"],
      columns: [{ key: "topic", label: "Topic" }, { key: "qos", label: "QoS" }, { key: "payload_bytes", label: "Bytes" }, { key: "from", label: "From" }],
      load: async () => (await call("GET", "/api/v1/retained")).sort(byKeys("topic")),
      actions: (r, again) => [
        el("button", { type: "button", text: "Show", onclick: async () => {
          const m = await call("GET", `/api/v1/retained/${encodeURIComponent(r.topic)}`);
          detail.hidden = false;
          detail.replaceChildren(el("h2", { text: m.topic }), el("pre", { text: m.payload }));
        } }),
        confirmButton("Delete", async () => {
          await call("DELETE", `/api/v1/retained/${encodeURIComponent(r.topic)}`);
          await again();
        }),
      ],
      after: [detail],
    });
  },
});

register("alarms", {
  title: "Alarms",
  async render(view) {
    const refresh = async () => {
      const r = await api("GET", "/api/v1/alarms");
      if (r.status === 404) {
        view.replaceChildren(el("p", { class: "notice", id: "alarms-unavailable", text: "alarms not available" }));
        return;
      }
      if (!r.ok) throw new Error((r.data && r.data.error) || `alarms: ${r.status}`);
      const cols = (rows) => {
        const keys = rows.length ? [...new Set(rows.flatMap((r) => Object.keys(r)))] : ["name", "message", "since"];
        return keys.map((k) => ({ key: k, label: k, fmt: ["since", "until", "at"].includes(k) ? Fmt.time : undefined }));
      };
      const active = r.data.active || [], history = r.data.history || [];
      view.replaceChildren(
        el("h2", { text: `Active (${active.length})` }), el("div", { id: "alarms-active" }, table(cols(active), active)),
        el("h2", { text: "History" }), table(cols(history), history),
      );
    };
    await refresh();
    return refresh;
  },
});

// The configuration in effect, flattened to dotted keys (secrets hidden by the API).
register("config", {
  title: "Configuration",
  async render(view) {
    const cfg = await call("GET", "/api/v1/config");
    const rows = [];
    const walk = (prefix, v) => {
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) {
        for (const [k, x] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, x);
      } else rows.push({ key: prefix, value: v });
    };
    walk("", cfg);
    await listPage(view, {
      searchId: "config-search",
      placeholder: "search key or value",
      fields: ["key", "value"],
      listId: "config-list",
      columns: [{ key: "key", label: "Key" }, { key: "value", label: "Value" }],
      load: async () => rows,
    });
  },
});

register("log", {
  title: "Log level",
  async render(view) {
    const current = el("code", { id: "log-level" });
    const input = el("input", { id: "log-input", placeholder: "a level, or a filter like info,ringmq::shard=debug" });
    const set = async (level) => {
      const r = await call("PUT", "/api/v1/log/level", { level });
      current.textContent = r.level;
      App.say(`log level set to ${r.level}`);
    };
    view.append(
      el("p", {}, "Current level: ", current),
      el("div", { class: "toolbar" }, ["error", "warn", "info", "debug", "trace"].map((l) =>
        el("button", { type: "button", text: l, onclick: () => set(l).catch((e) => App.say(e.message, true)) }))),
      el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); set(input.value.trim()).catch((x) => App.say(x.message, true)); } },
        input, el("button", { type: "submit", id: "log-set", text: "Set" })),
    );
    current.textContent = (await call("GET", "/api/v1/log/level")).level;
  },
});

// Tracing: every packet of a client, or every publish to a filter, logged at info.
register("trace", {
  title: "Trace",
  async render(view) {
    const list = el("div", { id: "trace-list" });
    const change = async (kind, value, on) => {
      await call("POST", "/api/v1/trace", { kind, value, on });
      await refresh();
    };
    const refresh = async () => {
      const t = await call("GET", "/api/v1/trace");
      const rows = [
        ...t.clients.map((v) => ({ kind: "client", value: v })),
        ...t.topics.map((v) => ({ kind: "topic", value: v })),
      ];
      list.replaceChildren(table([{ key: "kind", label: "Kind" }, { key: "value", label: "Client id or filter" }], rows,
        (r) => [el("button", { type: "button", text: "Stop", onclick: () => change(r.kind, r.value, false).catch((e) => App.say(e.message, true)) })]));
    };
    const kind = el("select", { id: "trace-kind" }, el("option", { value: "client", text: "client" }), el("option", { value: "topic", text: "topic" }));
    const value = el("input", { id: "trace-value", placeholder: "client id or topic filter" });
    view.append(
      el("p", { class: "muted", text: "Traced clients and topics are logged by the broker (see its log)." }),
      el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); change(kind.value, value.value.trim(), true).catch((x) => App.say(x.message, true)); } },
        kind, value, el("button", { type: "submit", id: "trace-add", text: "Start tracing" })),
      list,
    );
    await refresh();
    return refresh;
  },
});
