"""paho-mqtt against EMQX's topic features in ringmq (#15): rewrite rules, auto-subscribe,
`$queue/` as a shared group and `$exclusive/` refused to a second client, over 2 shards."""
import queue
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import free_port, start_broker, stop_broker

TIMEOUT = 5

CONFIG = r'''
[broker]
pin_cores = false

[[rewrite]]
action = "publish"
source = "old/#"
re = "^old/(.+)$"
dest = "new/$1"

[[rewrite]]
action = "subscribe"
source = "alias/+"
re = '^alias/(\w+)$'
dest = "new/$1"

[[auto_subscribe]]
topic = "inbox/${clientid}"
qos = 1
'''


@pytest.fixture
def topics_broker(tmp_path):
    port = free_port()
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text(CONFIG)
    proc, log = start_broker(
        ["--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--shards", "2",
         "--data-dir", str(tmp_path / "data")], port, tmp_path / "broker.log")
    yield port
    stop_broker(proc, log)


def client(port, client_id, inbox=None):
    """A started v5 client; what it receives goes to `inbox` as (topic, payload)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    if inbox is not None:
        c.on_message = lambda cl, ud, msg: inbox.put((msg.topic, msg.payload))
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK"
    return c


def subscribe(c, topic, qos=1):
    """Subscribes and returns the SUBACK's reason code values."""
    done = queue.Queue()
    c.on_subscribe = lambda cl, ud, mid, codes, props: done.put([r.value for r in codes])
    c.subscribe(topic, qos=qos)
    return done.get(timeout=TIMEOUT)


def test_rewrite_and_auto_subscribe(topics_broker):
    inbox = queue.Queue()
    sub = client(topics_broker, "paho-sub", inbox)
    assert subscribe(sub, "alias/x") == [1]
    pub = client(topics_broker, "paho-pub")
    pub.publish("old/x", b"rewritten", qos=1).wait_for_publish(TIMEOUT)
    assert inbox.get(timeout=TIMEOUT) == ("new/x", b"rewritten")
    # Subscribed at CONNECT without asking.
    pub.publish("inbox/paho-sub", b"auto", qos=1).wait_for_publish(TIMEOUT)
    assert inbox.get(timeout=TIMEOUT) == ("inbox/paho-sub", b"auto")
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()


def test_queue_is_shared_and_exclusive_is_refused_to_a_second_client(topics_broker):
    inboxes = [queue.Queue() for _ in range(3)]
    members = [client(topics_broker, f"q{i}", q) for i, q in enumerate(inboxes)]
    for m in members:
        assert subscribe(m, "$queue/jobs") == [1]
    pub = client(topics_broker, "q-pub")
    for i in range(30):
        pub.publish("jobs", str(i).encode(), qos=1).wait_for_publish(TIMEOUT)
    got = []
    counts = []
    for q in inboxes:
        n = 0
        while True:
            try:
                got.append(int(q.get(timeout=0.5)[1]))
                n += 1
            except queue.Empty:
                break
        counts.append(n)
    assert sorted(got) == list(range(30)), "each message to one member"
    assert all(n > 0 for n in counts), counts
    # $exclusive: the first holds it, every other gets 0x97 (quota exceeded).
    codes = [subscribe(m, "$exclusive/lock") for m in members + [pub]]
    assert codes[0] == [1] and all(c == [0x97] for c in codes[1:]), codes
    for c in members + [pub]:
        c.loop_stop()
        c.disconnect()
