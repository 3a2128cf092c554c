"""paho-mqtt against ringmq across a kill -9: a persistent QoS 1 subscriber (v5, session
expiry) is offline while a paho publisher's messages are acknowledged; the broker is killed
with SIGKILL and started again on the same data dir; the subscriber resumes its session and
receives every acknowledged message, in order, once."""
import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import free_port, start_broker, stop_broker

TIMEOUT = 10
N = 200


def start(tmp_path, port, shards):
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text("[broker]\npin_cores = false\n")
    return start_broker(
        ["--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--shards", str(shards),
         "--data-dir", str(tmp_path / "data")], port, tmp_path / "broker.log")


def subscriber(port, got, present):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-durable", protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    ready = threading.Event()

    def on_connect(client, userdata, flags, reason, properties):
        present.append(flags.session_present)
        ready.set()

    c.on_connect = on_connect
    c.on_message = lambda client, userdata, msg: got.put(msg.payload)
    c.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
    c.loop_start()
    assert ready.wait(TIMEOUT), "no CONNACK"
    return c


def test_paho_messages_acknowledged_before_a_kill_9_arrive_after_it(tmp_path):
    for shards in (1, 4):
        port = free_port()
        run = tmp_path / f"{shards}"
        run.mkdir()
        proc, log = start(run, port, shards)
        got, present = queue.Queue(), []
        sub = subscriber(port, got, present)
        done = threading.Event()
        sub.on_subscribe = lambda *args: done.set()
        sub.subscribe("paho/durable/#", qos=1)
        assert done.wait(TIMEOUT), "no SUBACK"
        sub.disconnect()
        sub.loop_stop()

        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=mqtt.MQTTv311)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for i in range(N):
            pub.publish("paho/durable/x", f"m{i:04}".encode(), qos=1).wait_for_publish(TIMEOUT)
        pub.disconnect()
        pub.loop_stop()
        stop_broker(proc, log)  # SIGKILL: no shutdown path runs

        proc, log = start(run, port, shards)
        got, present = queue.Queue(), []
        sub = subscriber(port, got, present)
        received = [got.get(timeout=TIMEOUT) for _ in range(N)]
        assert present == [True], f"{shards} shards: the session came back"
        assert received == [f"m{i:04}".encode() for i in range(N)]
        try:
            extra = got.get(timeout=0.5)
            raise AssertionError(f"{shards} shards: received {extra!r} twice")
        except queue.Empty:
            pass
        sub.disconnect()
        sub.loop_stop()
        stop_broker(proc, log)
