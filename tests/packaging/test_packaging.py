"""The packages, checked as an operator would use them: the .deb built with cargo-deb from the
release binary (tests/run.sh builds it first), unpacked with `dpkg-deb -x` and its binary started
with the packaged config (only paths and ports rewritten, so it runs unprivileged on loopback)
and driven by paho-mqtt; its maintainer scripts through shellcheck; the Dockerfile's steps run
as the script they are (docker build is not available), on the already built release binary
rather than a second compile; the Grafana dashboard and the Prometheus alert rules checked
against the metric names a running broker exports."""
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "target" / "release" / "ringmq"
METRIC = re.compile(r"\bringmq_[a-z0-9_]+")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    """Runs a command; its output, or the test fails with it."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def roundtrip(port):
    """A paho-mqtt client subscribes, publishes at QoS 1 and gets its message back."""
    got = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="packaging-check")
    c.on_message = lambda _c, _u, msg: msg.payload == b"packaged" and got.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        _, mid = c.subscribe("pkg/t", qos=1)
        assert mid is not None
        time.sleep(0.1)
        c.publish("pkg/t", b"packaged", qos=1).wait_for_publish(5)
        assert got.wait(5), "no message back from the broker"
    finally:
        c.loop_stop()
        c.disconnect()


def rewrite(config: Path, root: Path):
    """Points the config's paths under `root` and its ports at free loopback ones: the only
    changes made to the packaged file. Returns the MQTT and admin ports."""
    port, admin = free_port(), free_port()
    text = config.read_text()
    for old, new in [("/var/lib/ringmq", f"{root}/var/lib/ringmq"),
                     ("/var/log/ringmq", f"{root}/var/log/ringmq"),
                     ("0.0.0.0:1883", f"127.0.0.1:{port}"),
                     ("127.0.0.1:18083", f"127.0.0.1:{admin}")]:
        assert old in text, f"{config} has no {old}"
        text = text.replace(old, new)
    config.write_text(text)
    return port, admin


class Broker:
    """The binary under `root` started with `ringmq start` and the system config `config`
    (no -c: the installed binary's rule), stopped with `ringmq stop`."""

    def __init__(self, root: Path, config: Path, ports, env=None):
        self.bin = root / "usr/bin/ringmq"
        self.env = {**os.environ, "RINGMQ_SYSTEM_CONFIG": str(config), **(env or {})}
        self.port, self.admin = ports

    def cmd(self, *args):
        return subprocess.run([str(self.bin), *args], capture_output=True, text=True, env=self.env)

    def __enter__(self):
        p = self.cmd("start")
        assert p.returncode == 0, f"start: {p.stdout}{p.stderr}"
        return self

    def __exit__(self, *exc):
        p = self.cmd("stop")
        assert p.returncode == 0, f"stop: {p.stdout}{p.stderr}"

    def metrics(self):
        """The metric families /metrics names (from its # TYPE lines)."""
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    assert RELEASE.exists(), f"{RELEASE} is missing: cargo build --release first (tests/run.sh does)"
    assert shutil.which("cargo-deb"), "cargo-deb is missing: cargo install cargo-deb --locked"
    out = tmp_path_factory.mktemp("deb")
    run(["cargo", "deb", "--no-build", "--fast", "--output", out], cwd=ROOT)
    (path,) = out.glob("ringmq_*.deb")
    return path


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    run(["dpkg-deb", "-x", deb, root])
    run(["dpkg-deb", "-e", deb, root / "DEBIAN"])
    return root


@pytest.fixture(scope="module")
def broker(unpacked):
    """The unpacked .deb's broker, running on its (rewritten) packaged config."""
    config = unpacked / "etc/ringmq/ringmq.toml"
    with Broker(unpacked, config, rewrite(config, unpacked)) as b:
        yield b


def test_the_deb_holds_binary_unit_config_and_scripts(unpacked):
    assert os.access(unpacked / "usr/bin/ringmq", os.X_OK)
    (unit,) = [p for p in unpacked.glob("**/systemd/system/ringmq.service")]
    assert "ExecStart=ringmq run --config /etc/ringmq/ringmq.toml" in unit.read_text()
    control = unpacked / "DEBIAN"
    assert "/etc/ringmq/ringmq.toml" in (control / "conffiles").read_text().split()
    postinst = (control / "postinst").read_text()
    assert "useradd --system" in postinst and "/var/lib/ringmq /var/log/ringmq" in postinst
    assert "#DEBHELPER#" not in postinst, "cargo-deb fills in the systemd snippets"
    assert "deb-systemd-helper" in postinst
    assert "rm -rf /var/lib/ringmq /var/log/ringmq" in (control / "postrm").read_text()
    assert re.search(r"^Depends:.*libc6", (control / "control").read_text(), re.M)
    config = (unpacked / "etc/ringmq/ringmq.toml").read_text()
    assert 'data_dir = "/var/lib/ringmq"' in config
    assert 'output = "file"' in config and 'dir = "/var/log/ringmq"' in config


def test_maintainer_scripts_pass_shellcheck(unpacked):
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (tests/run.sh installs it from apt)")
    scripts = [p for p in (unpacked / "DEBIAN").iterdir() if p.name in ("postinst", "postrm", "prerm", "preinst")]
    assert {p.name for p in scripts} >= {"postinst", "postrm"}
    run(["shellcheck", *scripts, ROOT / "packaging/docker-build-steps.sh"])


def test_the_unpacked_broker_serves_mqtt_on_the_packaged_config(broker, unpacked):
    p = broker.cmd("ping")
    assert p.returncode == 0 and p.stdout.strip() == "pong", p.stdout + p.stderr
    roundtrip(broker.port)
    assert (unpacked / "var/lib/ringmq/ringmq.pid").exists()
    assert (unpacked / "var/lib/ringmq/store").is_dir()
    logs = list((unpacked / "var/log/ringmq").glob("ringmq.log*"))
    assert logs, "the packaged config logs to files in the log dir"
    p = broker.cmd("check-config")
    assert p.stdout.strip() == f"{unpacked}/etc/ringmq/ringmq.toml: ok", p.stdout + p.stderr


def exprs_of_dashboard(dash):
    """Every PromQL expression of a Grafana dashboard: panel targets and variable queries."""
    out = []
    for panel in dash["panels"]:
        out += [t["expr"] for t in panel.get("targets", [])]
        for inner in panel.get("panels", []):
            out += [t["expr"] for t in inner.get("targets", [])]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            out.append(q["query"])
    return out


def test_the_grafana_dashboard_uses_only_exported_metrics(broker):
    dash = json.loads((ROOT / "packaging/grafana/ringmq-dashboard.json").read_text())
    assert dash["uid"] and dash["schemaVersion"] >= 30
    for panel in dash["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']} has no query"
    used = {m for e in exprs_of_dashboard(dash) for m in METRIC.findall(e)}
    exported = broker.metrics()
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    for needed in ["ringmq_connections", "ringmq_sessions", "ringmq_messages_received_total",
                   "ringmq_messages_sent_total", "ringmq_bytes_received_total",
                   "ringmq_bytes_sent_total", "ringmq_messages_dropped_total",
                   "ringmq_store_records_total", "ringmq_store_failures_total",
                   "ringmq_loop_lag_microseconds"]:
        assert needed in used, f"no panel shows {needed}"


def test_the_alert_rules_parse_and_use_exported_metrics(broker):
    rules = yaml.safe_load((ROOT / "packaging/prometheus/ringmq-alerts.yml").read_text())
    (group,) = rules["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    for name, r in alerts.items():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert not re.search(r"\bfor\b", r["expr"]) and r["expr"].count("(") == r["expr"].count(")")
    exported = broker.metrics()
    used = {m for r in alerts.values() for m in METRIC.findall(r["expr"])}
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    assert alerts["RingmqDown"]["expr"].startswith("up{")
    assert {"RingmqConnectionsNearLimit", "RingmqMessagesDropped", "RingmqStoreFailures",
            "RingmqLoopLagHigh"} <= set(alerts)
    if shutil.which("promtool"):
        run(["promtool", "check", "rules", ROOT / "packaging/prometheus/ringmq-alerts.yml"])


def dockerfile():
    """The Dockerfile's instructions as (keyword, rest) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    return [tuple(l.split(None, 1)) for l in lines]


def test_the_dockerfile_is_multi_stage_small_and_unprivileged():
    steps = dockerfile()
    froms = [rest for kw, rest in steps if kw == "FROM"]
    assert len(froms) == 2 and froms[0].startswith("rust:") and froms[0].endswith(" AS builder")
    assert re.fullmatch(r"debian:\w+-slim", froms[1])
    assert [rest for kw, rest in steps if kw == "USER"] == ["ringmq"]
    (expose,) = [rest for kw, rest in steps if kw == "EXPOSE"]
    assert expose.split() == ["1883", "8883", "8083", "18083"]
    notes = (ROOT / "Dockerfile").read_text()
    assert "seccomp=unconfined" in notes and "RINGMQ_BROKER__DRIVER=epoll" in notes


def test_hadolint_passes_the_dockerfile():
    if not shutil.which("hadolint"):
        pytest.skip("hadolint is not installed (it is not packaged in Debian); the Dockerfile's "
                    "steps are still run and checked")
    run(["hadolint", ROOT / "Dockerfile"])


def test_the_dockerfile_steps_build_an_image_tree_that_serves_mqtt(tmp_path):
    """Runs each RUN of the Dockerfile, its paths mapped into tmp_path: the builder's /src is
    this checkout, its /stage and the runtime's / are temporary dirs, COPY --from copies between
    them. The builder takes the release binary tests/run.sh built (RINGMQ_PREBUILT) instead of
    compiling it again: same script, same layout, minutes less."""
    assert RELEASE.exists(), f"{RELEASE} is missing"
    stage, image = tmp_path / "stage", tmp_path / "image"
    paths = {"/src": ROOT, "/stage": stage, "/": image}
    stage_of_copy = {}
    env = {**os.environ, "RINGMQ_PREBUILT": str(RELEASE)}
    image_env = {}
    ran = []
    for kw, rest in dockerfile():
        if kw == "COPY" and rest.startswith("--from=builder "):
            src, dst = rest.split()[1:]
            shutil.copytree(paths[src.rstrip("/") or "/"], image, dirs_exist_ok=True)
        elif kw == "COPY" and rest.startswith("packaging/"):
            src, dst = rest.split()
            stage_of_copy[dst] = ROOT / src
        elif kw == "RUN":
            words = rest.split()
            assert words[0] == "bash" and words[1].endswith("docker-build-steps.sh"), rest
            script = stage_of_copy.get(words[1], ROOT / words[1])
            args = [str(paths.get(w, w)) for w in words[2:]]
            run(["bash", script, *args], env=env)
            ran.append(words[2])
        elif kw == "ENV":
            image_env.update(dict(kv.split("=", 1) for kv in rest.split()))
    assert ran == ["build", "runtime"]
    assert os.access(image / "usr/bin/ringmq", os.X_OK)
    assert (image / "var/lib/ringmq").is_dir() and (image / "var/log/ringmq").is_dir()
    assert image_env["RINGMQ_LOG__OUTPUT"] == "stderr"
    config = image / "etc/ringmq/ringmq.toml"
    with Broker(image, config, rewrite(config, image), image_env) as b:
        health = b.cmd("ping")
        assert health.returncode == 0 and health.stdout.strip() == "pong", health.stderr
        roundtrip(b.port)
        assert not list((image / "var/log/ringmq").glob("ringmq.log*")), "the image logs to stderr"
        assert "ringmq listening" in (image / "var/log/ringmq/console.log").read_text()
