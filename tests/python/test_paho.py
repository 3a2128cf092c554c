"""paho-mqtt against ringmq: the everyday client, with its 1.x callback API and its 2.x API,
over MQTT 3.1.1 and 5.0. A subscriber answering a request on another topic must just work, on
one broker and across two nodes of a cluster."""
import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 5


def started(client, port):
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK"
    return client


def test_request_reply_v311_with_the_1x_api(endpoints):
    at_responder, at_requester = endpoints
    responder = mqtt.Client(CallbackAPIVersion.VERSION1, client_id="responder", protocol=mqtt.MQTTv311)
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        client.publish("svc/reply/" + msg.topic.split("/")[-1], b"pong:" + msg.payload, qos=1)

    responder.on_message = on_message
    responder.on_subscribe = lambda client, userdata, mid, granted: subscribed.set()
    started(responder, at_responder)
    responder.subscribe("svc/request/+", qos=1)
    assert subscribed.wait(TIMEOUT)

    replies = queue.Queue()
    requester = mqtt.Client(CallbackAPIVersion.VERSION1, client_id="requester", protocol=mqtt.MQTTv311)
    got_suback = threading.Event()
    requester.on_message = lambda client, userdata, msg: replies.put((msg.topic, msg.payload))
    requester.on_subscribe = lambda client, userdata, mid, granted: got_suback.set()
    started(requester, at_requester)
    requester.subscribe("svc/reply/#", qos=1)
    assert got_suback.wait(TIMEOUT)
    for i in range(20):
        requester.publish(f"svc/request/{i}", f"ping{i}".encode(), qos=1)
    got = sorted(replies.get(timeout=TIMEOUT) for _ in range(20))
    assert got == sorted((f"svc/reply/{i}", f"pong:ping{i}".encode()) for i in range(20))
    for c in (responder, requester):
        c.loop_stop()
        c.disconnect()


def test_request_reply_v5_with_the_2x_api(endpoints):
    at_responder, at_requester = endpoints
    responder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="r5", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()

    def on_message(client, userdata, msg):
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        client.publish(msg.properties.ResponseTopic, msg.payload.upper(), qos=2, properties=props)

    responder.on_message = on_message
    responder.on_subscribe = lambda client, userdata, mid, reason_codes, props: subscribed.set()
    started(responder, at_responder)
    responder.subscribe("rpc/upper", qos=2)
    assert subscribed.wait(TIMEOUT)

    replies = queue.Queue()
    requester = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="q5", protocol=mqtt.MQTTv5)
    got_suback = threading.Event()
    requester.on_message = lambda client, userdata, msg: replies.put(
        (msg.payload, msg.properties.CorrelationData, msg.qos))
    requester.on_subscribe = lambda client, userdata, mid, reason_codes, props: got_suback.set()
    started(requester, at_requester)
    requester.subscribe("rpc/answers", qos=2)
    assert got_suback.wait(TIMEOUT)
    for i in range(10):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "rpc/answers"
        props.CorrelationData = f"id-{i}".encode()
        requester.publish("rpc/upper", f"word{i}".encode(), qos=2, properties=props)
    got = sorted(replies.get(timeout=TIMEOUT) for _ in range(10))
    assert got == sorted((f"WORD{i}".encode(), f"id-{i}".encode(), 2) for i in range(10))
    for c in (responder, requester):
        c.loop_stop()
        c.disconnect()


def test_retained_and_will_with_paho(broker):
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=mqtt.MQTTv311)
    seen = queue.Queue()
    watcher.on_message = lambda client, userdata, msg: seen.put((msg.topic, msg.payload, msg.retain))
    started(watcher, broker)

    dying = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dying", protocol=mqtt.MQTTv5)
    dying.will_set("status/dying", b"offline", qos=1, retain=True)
    started(dying, broker)
    info = dying.publish("status/dying", b"online", qos=1, retain=True)
    info.wait_for_publish(TIMEOUT)
    watcher.subscribe("status/#", qos=1)
    assert seen.get(timeout=TIMEOUT) == ("status/dying", b"online", True)
    dying.loop_stop()
    dying.socket().close()
    assert seen.get(timeout=TIMEOUT) == ("status/dying", b"offline", False)
    watcher.loop_stop()
    watcher.disconnect()
