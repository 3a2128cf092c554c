"""Delayed publish with paho-mqtt (v5): `$delayed/{seconds}/{topic}` reaches the target
topic's subscriber, with its properties, no earlier than the delay after it was sent (the
broker's deadline is taken when the publish arrives, which is after the client sent it)."""
import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from test_paho import TIMEOUT, started

DELAY = 2


def test_delayed_publish_v5(broker):
    got = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="py-delayed-sub", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    sub.on_message = lambda client, userdata, msg: got.put((time.time(), msg))
    sub.on_subscribe = lambda *args: subscribed.set()
    started(sub, broker)
    sub.subscribe("py/delayed", qos=1)
    assert subscribed.wait(TIMEOUT)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="py-delayer", protocol=mqtt.MQTTv5)
    started(pub, broker)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("via", "paho")
    sent = time.time()
    info = pub.publish(f"$delayed/{DELAY}/py/delayed", b"eventually", qos=1, properties=props)
    info.wait_for_publish(TIMEOUT)
    assert info.is_published(), "PUBACK"
    arrived, msg = got.get(timeout=DELAY + 20)
    # The broker keeps deadlines in whole milliseconds, taken by truncating: up to 1 ms early.
    assert arrived >= sent + DELAY - 0.001, f"arrived {arrived - sent:.3f} s after sending"
    assert msg.topic == "py/delayed"
    assert msg.payload == b"eventually"
    assert ("via", "paho") in msg.properties.UserProperty
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()
