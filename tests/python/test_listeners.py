"""TLS, mutual TLS, WebSocket, secure WebSocket and Unix-socket listeners with real clients:
paho-mqtt over TLS (a CA made here with `cryptography`), client certificates accepted and
refused, a wrong hostname and an expired certificate refused by the client, paho over ws, wss
and a Unix socket, and MQTT.js from Node over ws. Every run crosses listener types: what goes
in on one comes out on TCP."""
import datetime
import queue
import ssl
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import free_port, start_broker, stop_broker

TIMEOUT = 5
ROOT = Path(__file__).resolve().parents[2]


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca=False, sans=(), days=(-1, 30)):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(days=days[0]))
         .not_valid_after(now + datetime.timedelta(days=days[1]))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None):
    if cert is not None:
        path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    new_key = lambda: ec.generate_private_key(ec.SECP256R1())
    ca_key = new_key()
    ca = _cert("ringmq test CA", ca_key, "ringmq test CA", ca_key, ca=True, days=(-1, 365))
    _write(d / "ca", ca)
    server_key = new_key()
    _write(d / "server", _cert("localhost", server_key, "ringmq test CA", ca_key, sans=["localhost"]), server_key)
    _write(d / "expired", _cert("localhost", server_key, "ringmq test CA", ca_key, sans=["localhost"], days=(-30, -1)),
           server_key)
    client_key = new_key()
    _write(d / "client", _cert("device-9", client_key, "ringmq test CA", ca_key), client_key)
    return d


@pytest.fixture(scope="module")
def listeners(certs, tmp_path_factory):
    work = tmp_path_factory.mktemp("broker")
    ports = {name: free_port() for name in ["tcp", "tls", "mtls", "expired", "ws", "wss"]}
    tls = f'certfile = "{certs}/server.pem"\nkeyfile = "{certs}/server.key"\n'
    cfg = work / "ringmq.toml"
    cfg.write_text(
        "[broker]\npin_cores = false\n"
        f'[listeners.tcp]\nbind = "127.0.0.1:{ports["tcp"]}"\n'
        f'[listeners.tls]\ntype = "tls"\nbind = "127.0.0.1:{ports["tls"]}"\n{tls}'
        f'[listeners.mtls]\ntype = "tls"\nbind = "127.0.0.1:{ports["mtls"]}"\n{tls}'
        f'cafile = "{certs}/ca.pem"\nverify_peer = true\nfail_if_no_peer_cert = true\npeer_cert_as_username = "cn"\n'
        f'[listeners.expired]\ntype = "tls"\nbind = "127.0.0.1:{ports["expired"]}"\n'
        f'certfile = "{certs}/expired.pem"\nkeyfile = "{certs}/server.key"\n'
        f'[listeners.ws]\ntype = "ws"\nbind = "127.0.0.1:{ports["ws"]}"\n'
        f'[listeners.wss]\ntype = "wss"\nbind = "127.0.0.1:{ports["wss"]}"\n{tls}'
        f'[listeners.unix]\ntype = "unix"\nsocket_path = "{work}/mqtt.sock"\n')
    proc, log = start_broker(["--config", str(cfg), "--shards", "2", "--data-dir", str(work / "data")],
                             ports["wss"], work / "broker.log")
    yield {**ports, "unix": str(work / "mqtt.sock")}
    stop_broker(proc, log)


def client(cid, transport="tcp"):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    return c


def run(c, host, port):
    """Connects and starts the loop; returns the CONNACK reason code (or raises)."""
    done = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: done.put(rc)
    c.connect(host, port, keepalive=30)
    c.loop_start()
    return done.get(timeout=TIMEOUT)


def tcp_echo(port, topic, reply_topic):
    """A plain TCP client that answers every message on `topic` on `reply_topic`."""
    c = client(f"echo-{reply_topic}")
    ready = threading.Event()
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, ud, msg: cl.publish(reply_topic, b"echo:" + msg.payload, qos=1)
    assert run(c, "127.0.0.1", port) == 0
    c.subscribe(topic, qos=1)
    assert ready.wait(TIMEOUT)
    return c


def round_trip(c, tag):
    """`c` publishes on <tag>/out; the TCP echo answers on <tag>/back."""
    got = queue.Queue()
    ready = threading.Event()
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = lambda cl, ud, msg: got.put(msg.payload)
    c.subscribe(f"{tag}/back", qos=1)
    assert ready.wait(TIMEOUT)
    c.publish(f"{tag}/out", b"hi", qos=1)
    assert got.get(timeout=TIMEOUT) == b"echo:hi"
    c.loop_stop()
    c.disconnect()


@pytest.mark.parametrize("kind", ["tls", "ws", "wss", "unix"])
def test_paho_crosses_listener_types(listeners, certs, kind):
    echo = tcp_echo(listeners["tcp"], f"{kind}/out", f"{kind}/back")
    transport = {"ws": "websockets", "wss": "websockets", "unix": "unix"}.get(kind, "tcp")
    c = client(f"paho-{kind}", transport)
    if kind in ("tls", "wss"):
        c.tls_set(ca_certs=str(certs / "ca.pem"))
    if kind == "unix":
        assert run(c, listeners["unix"], 1883) == 0  # paho wants a port; a Unix socket has none
    else:
        assert run(c, "localhost", listeners[kind]) == 0
    round_trip(c, kind)
    echo.loop_stop()
    echo.disconnect()


def test_mutual_tls_accepts_the_cas_client_and_refuses_others(listeners, certs):
    echo = tcp_echo(listeners["tcp"], "mtls/out", "mtls/back")
    c = client("paho-mtls")
    c.tls_set(ca_certs=str(certs / "ca.pem"), certfile=str(certs / "client.pem"), keyfile=str(certs / "client.key"))
    assert run(c, "localhost", listeners["mtls"]) == 0
    round_trip(c, "mtls")
    echo.loop_stop()
    echo.disconnect()
    bare = client("paho-no-cert")
    bare.tls_set(ca_certs=str(certs / "ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, queue.Empty)):
        run(bare, "localhost", listeners["mtls"])
    bare.loop_stop()


def test_wrong_hostname_is_refused_by_the_client(listeners, certs):
    c = client("paho-wrong-host")
    c.tls_set(ca_certs=str(certs / "ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)hostname|IP address mismatch"):
        c.connect("127.0.0.1", listeners["tls"])


def test_expired_certificate_is_refused_by_the_client(listeners, certs):
    c = client("paho-expired")
    c.tls_set(ca_certs=str(certs / "ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError, match="(?i)expired"):
        c.connect("localhost", listeners["expired"])


def test_mqttjs_over_websocket(listeners):
    echo = tcp_echo(listeners["tcp"], "js/out", "js/back")
    out = subprocess.run(["node", str(ROOT / "tests/node/ws_roundtrip.js"), f"ws://127.0.0.1:{listeners['ws']}/mqtt"],
                         capture_output=True, text=True, timeout=30)
    echo.loop_stop()
    echo.disconnect()
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "js/back echo:hello from mqtt.js"
