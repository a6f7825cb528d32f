"""Quiet by default: a user sees progress bars and a summary, not pages of third-party INFO logs.

Light on purpose (no torch, no transformers): the CLI and the training scripts call it before those
load, so warnings printed at import time (bitsandbytes' `kernels` notice, vLLM's Triton and NUMA
lines) are silenced too. `--verbose` brings everything back.
"""

from __future__ import annotations

import logging
import os

NOISY = ("vllm", "transformers", "datasets", "accelerate", "torch", "matminer", "pymatgen", "bitsandbytes", "peft", "trl",
         "huggingface_hub", "sevenn", "chgnet", "ray")


def quiet_third_party(verbose: bool) -> None:
    """Silence third-party warnings and logs in this process and the ones it starts (vLLM's engine)."""
    if verbose:
        os.environ["XTALLM_VERBOSE"] = "1"  # read by what starts later (a Ray cluster's worker logs)
        return
    import warnings

    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # vLLM's engine and worker processes inherit it
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
