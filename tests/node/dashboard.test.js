// The web dashboard in headless Chromium (Debian's, driven by playwright-core) against the real
// broker with admin credentials and live MQTT.js clients: login refused with a wrong password
// and accepted with the right one, the session cookie's flags, every page showing the broker's
// live data, a client kicked from the clients page (disconnected on the MQTT side, gone from the
// API), the charts receiving samples, a change without the CSRF token refused, logout. Writes a
// screenshot of each page to $DASHBOARD_SCREENSHOTS (default target/dashboard-screenshots/).
// Chromium runs with a fresh profile (a new user data dir) each time.
// Run: RINGMQ_BIN=target/debug/ringmq node --test tests/node/dashboard.test.js
const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const mqtt = require("mqtt");
const helpers = require("./helpers");
const { freePort, listening } = helpers;
const { chromium } = require("playwright-core");

const ROOT = path.resolve(__dirname, "../..");
const BIN = process.env.RINGMQ_BIN || path.join(ROOT, "target/debug/ringmq");
const SHOTS = process.env.DASHBOARD_SCREENSHOTS || path.join(ROOT, "target/dashboard-screenshots");
const USER = "admin";
const PASSWORD = "dash-Secret-7";
const WAIT = 15000;

let broker, dir, mqttPort, adminPort, base, context, page;
const clients = {};

const until = (what, check) => helpers.until(what, check, WAIT, 50);

// The admin API with basic auth, as `ctl` or a script would call it.
async function adminApi(p) {
  const r = await fetch(`${base}${p}`, { headers: { Authorization: "Basic " + Buffer.from(`${USER}:${PASSWORD}`).toString("base64") } });
  return { status: r.status, body: await r.json() };
}

function connect(clientId, opts = {}) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(`mqtt://127.0.0.1:${mqttPort}`, { clientId, protocolVersion: 5, reconnectPeriod: 0, ...opts });
    c.once("connect", () => resolve(c));
    c.once("error", reject);
    clients[clientId] = c;
  });
}

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function visit(name) {
  await page.goto(`${base}/dashboard/#/${name}`);
  await page.locator(`#page-${name}`).waitFor();
}

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "ringmq-dashboard-"));
  [mqttPort, adminPort] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${adminPort}`;
  const cfg = path.join(dir, "ringmq.toml");
  fs.writeFileSync(cfg, `[broker]\npin_cores = false\n[admin]\nusername = "${USER}"\npassword = "${PASSWORD}"\n`);
  broker = spawn(BIN, ["run", "--config", cfg, "--listen", `127.0.0.1:${mqttPort}`, "--admin", `127.0.0.1:${adminPort}`,
    "--shards", "2", "--data-dir", path.join(dir, "data")], { stdio: ["ignore", "ignore", fs.openSync(path.join(dir, "broker.log"), "w")] });
  await until("the broker to listen", async () => (await listening(mqttPort)) && (await listening(adminPort)));

  const sub = await connect("dash-sub-1");
  await sub.subscribeAsync("dash/+/temp", { qos: 1 });
  const pub = await connect("dash-pub-1");
  await pub.publishAsync("dash/room1/temp", "21.5", { qos: 1, retain: true });
  clients.timer = setInterval(() => pub.publish("dash/room2/temp", "19.0", { qos: 0 }), 50);
  await connect("dash-victim");

  context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(dir, "chromium-")), {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 860 },
  });
  page = await context.newPage();
});

after(async () => {
  clearInterval(clients.timer);
  for (const c of Object.values(clients)) if (c && c.end) c.end(true);
  if (context) await context.close();
  if (broker) broker.kill("SIGKILL");
  fs.rmSync(dir, { recursive: true, force: true });
});

test("the dashboard sends a visitor without a session to the login page", async () => {
  await page.goto(`${base}/dashboard/`);
  assert.equal(new URL(page.url()).pathname, "/dashboard/login");
  await shot("login");
});

test("a wrong password is refused", async () => {
  await page.fill("#username", USER);
  await page.fill("#password", "not-the-password");
  await page.click("#login-button");
  await page.locator("#login-error", { hasText: "wrong username or password" }).waitFor();
  assert.equal(new URL(page.url()).pathname, "/dashboard/login");
  assert.equal((await context.cookies()).length, 0);
});

test("the right password logs in with an HttpOnly SameSite=Strict cookie", async () => {
  await page.fill("#password", PASSWORD);
  await page.click("#login-button");
  await page.locator("#page-overview").waitFor();
  const [cookie] = await context.cookies();
  assert.equal(cookie.name, "ringmq_session");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/");
  assert.match(cookie.value, /^[0-9a-f]{64}$/);
  assert.equal(await page.evaluate(() => document.cookie), "", "the page's scripts cannot read the cookie");
});

test("overview: live counts, charts receiving samples, per-shard load", async () => {
  await until("the three connections", async () => (await page.textContent("#card-connections")) === "3");
  assert.equal(await page.textContent("#card-subscriptions"), "1");
  assert.equal(await page.textContent("#card-retained"), "1");
  const points = (id) => page.getAttribute(id, "data-points").then(Number);
  await until("five samples on every chart", async () => {
    for (const id of ["#chart-messages", "#chart-bytes", "#chart-connections", "#chart-lag"]) if ((await points(id)) < 5) return false;
    return true;
  });
  await until("a non-zero message rate", async () => Number((await page.getAttribute("#chart-messages", "data-last")).split(",")[0]) > 0);
  const shardRows = await page.locator("#page-overview .wide tbody tr").count();
  assert.equal(shardRows, 2, "one row per shard");
  await shot("overview");
});

test("clients: search, show, kick", async () => {
  await visit("clients");
  for (const id of ["dash-sub-1", "dash-pub-1", "dash-victim"]) await page.locator("#client-list td", { hasText: id }).first().waitFor();
  await page.fill("#client-search", "victim");
  assert.equal(await page.locator("#client-list tbody tr").count(), 1);
  await page.fill("#client-search", "");
  const row = (id) => page.locator("#client-list tr", { has: page.locator("td", { hasText: new RegExp(`^${id}$`) }) });
  await row("dash-sub-1").locator("button", { hasText: "Show" }).click();
  await page.locator("#client-detail td", { hasText: "dash/+/temp" }).waitFor();
  await shot("clients");

  const victim = clients["dash-victim"];
  const gone = new Promise((resolve) => {
    victim.on("disconnect", (p) => resolve(p.reasonCode));
    victim.on("close", () => resolve("closed"));
  });
  const kick = row("dash-victim").locator("button", { hasText: "Kick" });
  await kick.click();
  await row("dash-victim").locator("button", { hasText: "Confirm kick" }).click();
  const reason = await gone;
  assert.ok(reason === 0x98 || reason === "closed", `disconnected by the admin (got ${reason})`);
  await until("the client gone from the API", async () => (await adminApi("/api/v1/clients/dash-victim")).status === 404);
  await until("the client gone from the page", async () => (await row("dash-victim").count()) === 0);
});

test("subscriptions and topics", async () => {
  await visit("subscriptions");
  await page.locator("#page-subscriptions td", { hasText: "dash/+/temp" }).waitFor();
  await page.locator("#page-subscriptions td", { hasText: "dash-sub-1" }).waitFor();
  await shot("subscriptions");
  await visit("topics");
  await page.locator("#page-topics td", { hasText: "dash/+/temp" }).waitFor();
  await shot("topics");
});

test("retained messages", async () => {
  await visit("retained");
  const row = page.locator("#page-retained tr", { hasText: "dash/room1/temp" });
  await row.locator("button", { hasText: "Show" }).click();
  await page.locator("#retained-detail pre", { hasText: "21.5" }).waitFor();
  await shot("retained");
});

test("alarms", async () => {
  const api = await adminApi("/api/v1/alarms");
  await visit("alarms");
  if (api.status === 404) await page.locator("#alarms-unavailable", { hasText: "alarms not available" }).waitFor();
  else await page.locator("#alarms-active table").waitFor();
  await shot("alarms");
});

test("configuration, with the password hidden", async () => {
  await visit("config");
  await page.locator("#config-list td", { hasText: "admin.username" }).waitFor();
  const text = await page.textContent("#config-list");
  assert.ok(text.includes("(hidden)"));
  assert.ok(!text.includes(PASSWORD), "the admin password is not shown");
  await shot("config");
});

test("log level: view and change", async () => {
  await visit("log");
  await until("the level shown", async () => (await page.textContent("#log-level")) !== "");
  await page.fill("#log-input", "info,ringmq::shard=debug");
  await page.click("#log-set");
  await until("the new level", async () => (await adminApi("/api/v1/log/level")).body.level === "info,ringmq::shard=debug");
  // The page writes the level when its own PUT answers, which may come after the API says so.
  await until("the page shows it", async () => (await page.textContent("#log-level")) === "info,ringmq::shard=debug");
  await shot("log");
});

test("trace: start tracing a client", async () => {
  await visit("trace");
  await page.fill("#trace-value", "dash-sub-1");
  await page.click("#trace-add");
  await page.locator("#trace-list td", { hasText: "dash-sub-1" }).waitFor();
  assert.deepEqual((await adminApi("/api/v1/trace")).body.clients, ["dash-sub-1"]);
  await shot("trace");
});

test("a change with the cookie but without the CSRF token is refused", async () => {
  const codes = await page.evaluate(async () => {
    const put = (headers) => fetch("/api/v1/log/level", { method: "PUT", headers, body: JSON.stringify({ level: "trace" }) }).then((r) => r.status);
    return [await put({}), await put({ "X-CSRF-Token": "0".repeat(64) }), await fetch("/api/v1/status").then((r) => r.status)];
  });
  assert.deepEqual(codes, [403, 403, 200]);
  assert.notEqual((await adminApi("/api/v1/log/level")).body.level, "trace");
});

test("logout ends the session", async () => {
  await page.click("#logout");
  await page.waitForURL(`${base}/dashboard/login`);
  const status = await page.evaluate(() => fetch("/api/v1/status").then((r) => r.status));
  assert.equal(status, 401);
  await page.goto(`${base}/dashboard/`);
  assert.equal(new URL(page.url()).pathname, "/dashboard/login");
});
