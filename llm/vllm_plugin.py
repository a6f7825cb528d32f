"""A vLLM general plugin (entry point `vllm.general_plugins` in pyproject.toml).

vLLM runs it in every process it starts (engine core, workers), before any kernel: the only place where
code of ours runs inside a spawned vLLM worker.
"""

from __future__ import annotations


def enable_cpu_amx() -> None:
    """Ask Linux for the AMX tile state in this process.

    Linux gives a process AMX registers only after it asks (arch_prctl ARCH_REQ_XCOMP_PERM). vLLM's CPU bf16
    kernels use AMX on CPUs that have it without asking, so a freshly spawned worker dies with SIGILL
    ("Worker proc VllmWorker-0 died unexpectedly (exit code: -4)") at its first forward pass. torch asks on
    our behalf; on CPUs without AMX (or without the call) it does nothing.
    """
    try:
        import torch
    except ImportError:  # vLLM always has torch; a stripped environment must not break vLLM's start
        return
    init = getattr(torch.cpu, "_init_amx", None)
    if init is not None:
        init()
