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


@pytest.fixture(params=[1, 4], ids=["1shard", "4shards"])
def broker(request, tmp_path):
    port = free_port()
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text("[broker]\npin_cores = false\n")
    proc, log = start_broker(
        ["--config", str(cfg), "--listen", f"127.0.0.1:{port}", "--shards", str(request.param),
         "--data-dir", str(tmp_path / "data")], port, tmp_path / "broker.log")
    yield port
    stop_broker(proc, log)
