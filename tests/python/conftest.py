"""Starts the real ringmq binary on a free loopback port for each test."""
import os
import socket
import subprocess
import time

import pytest


_given = set()


def free_port():
    """A free loopback port never handed out before in this run (the kernel may offer a
    just-closed probe port again, and two listeners would then collide)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def start_broker(args, wait_port, log_path):
    """Starts RINGMQ_BIN with `args` (its admin API on a free port), waits until `wait_port`
    accepts; returns the process and its open log file."""
    log = open(log_path, "w")
    proc = subprocess.Popen([os.environ["RINGMQ_BIN"], *args, "--admin", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", wait_port), timeout=1).close()
            return proc, log
        except OSError:
            assert time.time() < deadline, "broker did not start"
            time.sleep(0.02)


def stop_broker(proc, log):
    proc.kill()
    proc.wait()
    log.close()


def start_one(tmp_path, shards):
    """One broker with `shards` shards on a free port: (process, log) and the port."""
    port = free_port()
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text("[broker]\npin_cores = false\n")
    node = start_broker(
        ["--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--shards", str(shards),
         "--data-dir", str(tmp_path / "data")], port, tmp_path / "broker.log")
    return node, port


@pytest.fixture(params=[1, 4], ids=["1shard", "4shards"])
def broker(request, tmp_path):
    (proc, log), port = start_one(tmp_path, request.param)
    yield port
    stop_broker(proc, log)


def start_cluster(tmp_path, n=3):
    """Starts `n` cluster nodes on 127.0.0.1-n (one shard each), seeded with each other; waits
    until each has formed or joined the cluster. Their (process, log) pairs and MQTT ports."""
    seats = [(f"n{i}@127.0.0.{i}", f"127.0.0.{i}:{free_port()}", f"127.0.0.{i}:{free_port()}",
              free_port()) for i in range(1, n + 1)]
    nodes = []
    for name, listen, rpc, port in seats:
        seeds = ", ".join(f'"{s[1]}"' for s in seats if s[0] != name)
        d = tmp_path / name
        d.mkdir()
        (d / "ringmq.toml").write_text(
            f'[broker]\npin_cores = false\nnode_name = "{name}"\n\n[cluster]\nenabled = true\n'
            f'listen = "{listen}"\nrpc_listen = "{rpc}"\nseeds = [{seeds}]\n'
            'cookie = "python-cluster-test-cookie-0123"\nnode_timeout_ms = 1500\n')
        nodes.append(start_broker(
            ["--config", str(d / "ringmq.toml"), "--listen", f"127.0.0.1:{port}", "--shards", "1",
             "--data-dir", str(d / "data")], port, d / "broker.log"))
    deadline = time.time() + 30
    for name, *_ in seats:
        log = tmp_path / name / "broker.log"
        while "formed the cluster" not in log.read_text() and "joined the cluster" not in log.read_text():
            assert time.time() < deadline, f"{name} never joined:\n{log.read_text()}"
            time.sleep(0.05)
    return nodes, [s[3] for s in seats]


@pytest.fixture(params=[1, 4, "cluster"], ids=["1shard", "4shards", "2nodes"])
def endpoints(request, tmp_path):
    """Where the two sides of a request/reply connect: one broker (1 or 4 shards), or two
    nodes of a three-node cluster (responder on the second, requester on the third)."""
    if request.param == "cluster":
        nodes, ports = start_cluster(tmp_path)
        yield ports[1], ports[2]
        for proc, log in nodes:
            stop_broker(proc, log)
        return
    (proc, log), port = start_one(tmp_path, request.param)
    yield port, port
    stop_broker(proc, log)
