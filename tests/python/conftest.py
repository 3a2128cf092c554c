"""Starts the real ringmq binary on a free loopback port for each test."""
import os
import socket
import subprocess
import time

import pytest


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=[1, 4], ids=["1shard", "4shards"])
def broker(request, tmp_path):
    port = free_port()
    cfg = tmp_path / "ringmq.toml"
    cfg.write_text("[broker]\npin_cores = false\n")
    log = open(tmp_path / "broker.log", "w")
    proc = subprocess.Popen(
        [os.environ["RINGMQ_BIN"], "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
         "--shards", str(request.param), "--admin", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.time() < deadline, "broker did not start"
            time.sleep(0.02)
    yield port
    proc.kill()
    proc.wait()
    log.close()
