// MQTT.js over WebSocket against ringmq: publish on js/out (a TCP client answers on js/back)
// and wait for the answer. Usage: node ws_roundtrip.js ws://127.0.0.1:PORT/mqtt
// Exits 0 when the answer arrives, 1 on error or after 10 s.
const mqtt = require("mqtt");

const url = process.argv[2];
const client = mqtt.connect(url, { clientId: "mqttjs-ws", protocolVersion: 5, reconnectPeriod: 0 });
const timer = setTimeout(() => { console.error("timeout"); process.exit(1); }, 10000);

client.on("error", (e) => { console.error("error", e.message); process.exit(1); });
client.on("connect", () => {
  client.subscribe("js/back", { qos: 1 }, (err) => {
    if (err) { console.error("subscribe", err.message); process.exit(1); }
    client.publish("js/out", "hello from mqtt.js", { qos: 1 });
  });
});
client.on("message", (topic, payload) => {
  console.log(`${topic} ${payload.toString()}`);
  clearTimeout(timer);
  client.end(false, {}, () => process.exit(0));
});
