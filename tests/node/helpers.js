// What the dashboard tests in Chromium and Firefox share: a free loopback port, waiting for a
// condition, and whether a port accepts connections.
const net = require("node:net");

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

// Polls `check` every `step` ms until it is true; fails after `wait` ms naming `what`.
async function until(what, check, wait, step) {
  const deadline = Date.now() + wait;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, step));
  }
}

const listening = (port) =>
  new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1", () => { s.end(); resolve(true); });
    s.on("error", () => resolve(false));
  });

module.exports = { freePort, until, listening };
