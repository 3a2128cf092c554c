// The web dashboard in headless Firefox (Debian's firefox-esr), driven over WebDriver BiDi with
// a small client of our own (playwright's Firefox driver needs its own patched build): the
// login page, a refused and an accepted login with the HttpOnly SameSite=Strict cookie, every
// page showing the broker's live data (MQTT.js clients), the charts receiving samples, a client
// kicked from the clients page, logout. The Chromium test (dashboard.test.js) covers the rest
// in more detail; this one shows the same pages work in Firefox. Screenshots go to
// $DASHBOARD_SCREENSHOTS (default target/dashboard-screenshots/) as firefox-*.png.
// Firefox runs with a fresh profile whose prefs turn off every background service and send any
// request beyond loopback to a closed local port: the test reaches nothing off this machine.
// Run: RINGMQ_BIN=target/debug/ringmq node --test tests/node/dashboard.firefox.test.js
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const mqtt = require("mqtt");
const helpers = require("./helpers");
const { freePort, listening } = helpers;
const WebSocket = require("ws");

const ROOT = path.resolve(__dirname, "../..");
const BIN = process.env.RINGMQ_BIN || path.join(ROOT, "target/debug/ringmq");
const FIREFOX = process.env.FIREFOX || "/usr/bin/firefox-esr";
const SHOTS = process.env.DASHBOARD_SCREENSHOTS || path.join(ROOT, "target/dashboard-screenshots");
const USER = "admin";
const PASSWORD = "dash-Secret-7";
const WAIT = 20000;

// Off: updates, telemetry, studies, safe browsing, captive-portal and connectivity checks,
// remote settings, DNS over HTTPS, prefetching. Anything else goes to a dead local proxy.
const PREFS = {
  "app.normandy.enabled": false,
  "app.update.auto": false,
  "app.update.enabled": false,
  "browser.safebrowsing.malware.enabled": false,
  "browser.safebrowsing.phishing.enabled": false,
  "browser.safebrowsing.downloads.enabled": false,
  "browser.safebrowsing.blockedURIs.enabled": false,
  "browser.search.update": false,
  "browser.shell.checkDefaultBrowser": false,
  "browser.startup.page": 0,
  "browser.newtabpage.enabled": false,
  "datareporting.healthreport.uploadEnabled": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "toolkit.telemetry.enabled": false,
  "toolkit.telemetry.unified": false,
  "extensions.update.enabled": false,
  "extensions.getAddons.cache.enabled": false,
  "extensions.blocklist.enabled": false,
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
  "network.dns.disablePrefetch": true,
  "network.prefetch-next": false,
  "network.trr.mode": 5,
  "services.settings.server": "http://127.0.0.1:9/",
  "media.gmp-manager.url": "http://127.0.0.1:9/",
  "network.proxy.type": 1,
  "network.proxy.http": "127.0.0.1",
  "network.proxy.http_port": 9,
  "network.proxy.share_proxy_settings": true,
  "network.proxy.no_proxies_on": "127.0.0.1,localhost",
  "network.proxy.allow_hijacking_localhost": false,
};

let broker, firefox, bidi, dir, mqttPort, adminPort, base, ctx;
const clients = {};

const until = (what, check) => helpers.until(what, check, WAIT, 100);

function connect(clientId) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, { clientId, protocolVersion: 5, reconnectPeriod: 0 });
    c.once("connect", () => resolve(c));
    c.once("error", reject);
    clients[clientId] = c;
  });
}

// A WebDriver BiDi session: commands answered by id; JavaScript errors of the page collected.
class Bidi {
  constructor(url) {
    this.ws = new WebSocket(url);
    this.next = 0;
    this.pending = new Map();
    this.errors = [];
    this.ws.on("message", (data) => {
      const m = JSON.parse(data);
      if (m.id !== undefined && this.pending.has(m.id)) {
        const { resolve, reject } = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.type === "error") reject(new Error(`${m.error}: ${m.message}`));
        else resolve(m.result);
      } else if (m.method === "log.entryAdded" && m.params.level === "error") {
        this.errors.push(m.params.text);
      }
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
  }

  call(method, params = {}) {
    return new Promise((resolve, reject) => {
      const id = ++this.next;
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  // The value of a JavaScript expression in the page (awaited when a promise).
  async eval(expression) {
    const r = await this.call("script.evaluate", { expression, target: { context: ctx }, awaitPromise: true });
    if (r.type === "exception") throw new Error(`in the page: ${r.exceptionDetails.text}`);
    return r.result.value;
  }
}

const go = (url) => bidi.call("browsingContext.navigate", { context: ctx, url, wait: "complete" });
const pathname = () => bidi.eval("location.pathname");
const text = (selector) => bidi.eval(`document.querySelector(${JSON.stringify(selector)})?.textContent ?? null`);
const exists = (selector) => bidi.eval(`!!document.querySelector(${JSON.stringify(selector)})`);
const fill = (selector, value) =>
  bidi.eval(`(() => { const e = document.querySelector(${JSON.stringify(selector)});
    e.value = ${JSON.stringify(value)}; e.dispatchEvent(new Event("input", { bubbles: true })); })()`);
const click = (selector) => bidi.eval(`document.querySelector(${JSON.stringify(selector)}).click()`);
// Clicks the button labelled `label` in the table row of `table` whose cell says `cell`.
const clickInRow = (table, cell, label) =>
  bidi.eval(`(() => {
    const row = [...document.querySelectorAll(${JSON.stringify(table + " tr")})]
      .find((r) => [...r.cells].some((c) => c.textContent === ${JSON.stringify(cell)}));
    const b = row && [...row.querySelectorAll("button")].find((b) => b.textContent === ${JSON.stringify(label)});
    if (!b) return false;
    b.click();
    return true;
  })()`);

async function shot(name) {
  const { data } = await bidi.call("browsingContext.captureScreenshot", { context: ctx, origin: "document" });
  fs.writeFileSync(path.join(SHOTS, `firefox-${name}.png`), Buffer.from(data, "base64"));
}

async function visit(name) {
  await go(`${base}/dashboard/#/${name}`);
  await until(`the ${name} page`, () => exists(`#page-${name}`));
}

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "ringmq-dashboard-ff-"));
  [mqttPort, adminPort] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${adminPort}`;
  const cfg = path.join(dir, "ringmq.toml");
  fs.writeFileSync(cfg, `[broker]\npin_cores = false\n[admin]\nusername = "${USER}"\npassword = "${PASSWORD}"\n`);
  broker = spawn(BIN, ["run", "--config", cfg, "--listen", `127.0.0.1:${mqttPort}`, "--admin", `127.0.0.1:${adminPort}`,
    "--shards", "2", "--data-dir", path.join(dir, "data")], { stdio: ["ignore", "ignore", fs.openSync(path.join(dir, "broker.log"), "w")] });
  await until("the broker to listen", async () => (await listening(mqttPort)) && (await listening(adminPort)));

  const sub = await connect("ff-sub-1");
  await sub.subscribeAsync("ff/+/temp", { qos: 1 });
  const pub = await connect("ff-pub-1");
  await pub.publishAsync("ff/room1/temp", "21.5", { qos: 1, retain: true });
  clients.timer = setInterval(() => pub.publish("ff/room2/temp", "19.0", { qos: 0 }), 50);
  await connect("ff-victim");

  const profile = fs.mkdtempSync(path.join(dir, "firefox-"));
  fs.writeFileSync(path.join(profile, "user.js"),
    Object.entries(PREFS).map(([k, v]) => `user_pref(${JSON.stringify(k)}, ${JSON.stringify(v)});`).join("\n") + "\n");
  const port = await freePort();
  firefox = spawn(FIREFOX, ["--headless", "--no-remote", "--profile", profile, "--remote-debugging-port", String(port),
    "--window-size", "1280,860", "about:blank"], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Firefox did not start WebDriver BiDi: ${stderr}`)), WAIT);
    firefox.stderr.on("data", (d) => {
      stderr += d;
      if (stderr.includes("WebDriver BiDi listening")) { clearTimeout(timer); resolve(); }
    });
    firefox.on("exit", (code) => reject(new Error(`Firefox exited (${code}): ${stderr}`)));
  });
  bidi = new Bidi(`ws://127.0.0.1:${port}/session`);
  await bidi.opened;
  await bidi.call("session.new", { capabilities: {} });
  await bidi.call("session.subscribe", { events: ["log.entryAdded"] });
  ctx = (await bidi.call("browsingContext.getTree", {})).contexts[0].context;
});

after(async () => {
  clearInterval(clients.timer);
  for (const c of Object.values(clients)) if (c && c.end) c.end(true);
  if (bidi) {
    await bidi.call("session.end").catch(() => {});
    bidi.ws.close();
  }
  if (firefox) firefox.kill("SIGKILL");
  if (broker) broker.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

test("Firefox: a visitor without a session is sent to the login page", async () => {
  await go(`${base}/dashboard/`);
  await until("the login page", async () => (await pathname()) === "/dashboard/login" && (await exists("#login-button")));
  await shot("login");
});

test("Firefox: a wrong password is refused, the right one logs in with a strict HttpOnly cookie", async () => {
  await fill("#username", USER);
  await fill("#password", "not-the-password");
  await click("#login-button");
  await until("the refusal", async () => ((await text("#login-error")) || "").includes("wrong username or password"));
  assert.equal(await pathname(), "/dashboard/login");
  await fill("#password", PASSWORD);
  await click("#login-button");
  await until("the overview", () => exists("#page-overview"));
  const { cookies } = await bidi.call("storage.getCookies", {});
  const session = cookies.find((c) => c.name === "ringmq_session");
  assert.ok(session, "the session cookie is set");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "strict");
  assert.equal(await bidi.eval("document.cookie"), "", "the page's scripts cannot read the cookie");
});

test("Firefox: overview counts and charts receive samples", async () => {
  await until("the three connections", async () => (await text("#card-connections")) === "3");
  assert.equal(await text("#card-subscriptions"), "1");
  assert.equal(await text("#card-retained"), "1");
  await until("five samples on every chart", async () => {
    for (const id of ["#chart-messages", "#chart-bytes", "#chart-connections", "#chart-lag"]) {
      const n = await bidi.eval(`Number(document.querySelector("${id}").getAttribute("data-points"))`);
      if (n < 5) return false;
    }
    return true;
  });
  assert.equal(await bidi.eval(`document.querySelectorAll("#page-overview .wide tbody tr").length`), 2, "one row per shard");
  await shot("overview");
});

test("Firefox: clients, and a kick that disconnects the client", async () => {
  await visit("clients");
  await until("the clients listed", async () => {
    const t = (await text("#client-list")) || "";
    return ["ff-sub-1", "ff-pub-1", "ff-victim"].every((id) => t.includes(id));
  });
  await shot("clients");
  const victim = clients["ff-victim"];
  const gone = new Promise((resolve) => {
    victim.on("disconnect", (p) => resolve(p.reasonCode));
    victim.on("close", () => resolve("closed"));
  });
  assert.ok(await clickInRow("#client-list", "ff-victim", "Kick"));
  await until("the confirm button", () => clickInRow("#client-list", "ff-victim", "Confirm kick"));
  const reason = await gone;
  assert.ok(reason === 0x98 || reason === "closed", `disconnected by the admin (got ${reason})`);
  await until("the client gone from the page", async () => !((await text("#client-list")) || "").includes("ff-victim"));
});

test("Firefox: subscriptions, topics, retained, alarms, configuration, log, trace", async () => {
  const pages = [
    ["subscriptions", "#page-subscriptions", "ff/+/temp"],
    ["topics", "#page-topics", "ff/+/temp"],
    ["retained", "#page-retained", "ff/room1/temp"],
    ["alarms", "#page-alarms", "Active"],
    ["config", "#config-list", "admin.username"],
    ["log", "#page-log", ""],
    ["trace", "#page-trace", ""],
  ];
  for (const [name, selector, shows] of pages) {
    await visit(name);
    await until(`${name} to show ${shows}`, async () => ((await text(selector)) || "").includes(shows));
    await shot(name);
  }
  await visit("config");
  await until("the configuration", async () => ((await text("#config-list")) || "").includes("admin.username"));
  const config = await text("#config-list");
  assert.ok(config.includes("(hidden)"));
  assert.ok(!config.includes(PASSWORD), "the admin password is not shown");
});

test("Firefox: logout ends the session, and the pages raised no script error", async () => {
  await click("#logout");
  await until("the login page", async () => (await pathname()) === "/dashboard/login");
  assert.equal(await bidi.eval(`fetch("/api/v1/status").then((r) => r.status)`), 401);
  assert.deepEqual(bidi.errors, [], "JavaScript errors in the pages");
});
