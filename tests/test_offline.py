"""The README's main path (`make demo`: `xtallm generate` on the embedded defaults, vLLM) with the network
unreachable: it works, and no process tried to connect anywhere but this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

GUARD = '''
import os, socket
_LOG = os.environ["XTALLM_NET_LOG"]
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0", "")

def _note(what):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {what}\\n")

_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(_LOCAL):
        _note(f"connect {address}")
        raise OSError("network unreachable (test)")
    return _connect(self, address)
socket.socket.connect = connect

_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host is not None and not str(host).startswith(_LOCAL) and host not in (socket.gethostname(),):
        _note(f"lookup {host}")
        raise socket.gaierror("network unreachable (test)")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
'''


@pytest.mark.slow
def test_demo_path_attempts_no_connection(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}  # no offline switch set
    env.update(PYTHONPATH=os.pathsep.join([str(guard), env.get("PYTHONPATH", "")]), XTALLM_NET_LOG=str(log),
               VLLM_CPU_KVCACHE_SPACE="1", HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "xtallm.pipelines.cli", "generate", "--num-samples", "4", "--out", str(tmp_path / "g")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["samples"] == 4
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"connections attempted:\n{attempts[:2000]}"
