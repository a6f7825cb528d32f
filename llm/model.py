"""Models and tokenizers: a from-scratch crystal LM, or any HF causal LM with full/LoRA/QLoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from xtallm.configs.recipe import is_hub_id

from .config import FinetuneConfig, ModelConfig

XTALLM_CONFIG = "xtallm.json"  # text format and conditions a model was trained with


def load_tokenizer(model_cfg: ModelConfig, max_length: int) -> PreTrainedTokenizerBase:
    if model_cfg.tokenizer:  # a saved tokenizer: no pymatgen needed (pretokenized training on a bare GPU box)
        return AutoTokenizer.from_pretrained(model_cfg.tokenizer, model_max_length=max_length)
    if model_cfg.base == "from_scratch":
        from xtallm.tokenization.tokenizer import build_crystal_tokenizer

        return build_crystal_tokenizer(model_max_length=max_length)
    tok = AutoTokenizer.from_pretrained(resolve_base(model_cfg.base), trust_remote_code=model_cfg.trust_remote_code)
    if tok.pad_token is None:  # Llama/Mistral/GPT-2 ship without one
        tok.pad_token = tok.eos_token
    return tok


def scratch_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    return LlamaForCausalLM(scratch_config(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id))


def scratch_config(cfg: ModelConfig, vocab_size: int, bos: int | None = 1, eos: int | None = 2, pad: int | None = 0) -> LlamaConfig:
    """Llama architecture sized by `model.scratch` (also used by the throughput benchmark)."""
    s = cfg.scratch
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta,
        tie_word_embeddings=s.tie_word_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        attn_implementation=cfg.attn_implementation,
    )


def load_model(config: FinetuneConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype | None = None):
    """The trainable model: full weights, or a PEFT model with LoRA (optionally on 4-bit weights)."""
    cfg = config.model
    if cfg.base == "from_scratch":
        model = scratch_model(cfg, tokenizer)
    else:
        kwargs = {"trust_remote_code": cfg.trust_remote_code}
        if cfg.attn_implementation:
            kwargs["attn_implementation"] = cfg.attn_implementation
        if cfg.method == "qlora":
            from transformers import BitsAndBytesConfig

            compute = dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
            kwargs["dtype"] = compute
            kwargs["device_map"] = _local_device_map()
        elif dtype is not None and cfg.method == "lora":
            kwargs["dtype"] = dtype  # frozen base in half precision; adapters train in fp32
        model = AutoModelForCausalLM.from_pretrained(resolve_base(cfg.base), **kwargs)
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, PeftModel, get_peft_model

        if cfg.adapter:
            model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=list(cfg.lora.target_modules),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    return model


def _local_device_map() -> dict[str, int | str]:
    """4-bit weights must sit on this process's device (one per DDP rank)."""
    from xtallm.configs.training import default_device

    if default_device() == "cuda":
        from accelerate import PartialState

        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def portable_base_name(base: str) -> str | None:
    """How a saved adapter names its base so that the name means the same from any folder: a shipped
    model by its name, a GGUF base by its short name or the .gguf file, a local folder by its absolute
    path, a hub id as typed; None when the adapter has no pretrained base."""
    if base == "from_scratch":
        return None
    if base == DEFAULT_MODEL or Path(base).expanduser().resolve() == (PRETRAINED_DIR / DEFAULT_MODEL).resolve():
        return DEFAULT_MODEL
    from .gguf import SHORT_NAMES, find_gguf

    gguf = find_gguf(base)
    if gguf is not None:
        return base if base in SHORT_NAMES else str(gguf.resolve())
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


IDENTITY_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size")


def base_identity(config, tokenizer) -> dict[str, Any]:
    """What an adapter needs of its base (architecture, sizes, the exact vocabulary), recorded with the
    adapter so that a base is checked from any folder, whatever its path or name."""
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items())
    identity = {k: getattr(config, k, None) for k in IDENTITY_KEYS}
    identity["architectures"] = list(getattr(config, "architectures", None) or [])
    identity["vocab_sha256"] = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]
    return identity


def model_identity(model: str) -> dict[str, Any]:
    """`base_identity` of a model folder (config and tokenizer only: no weights are read)."""
    from transformers import AutoConfig, AutoTokenizer

    return base_identity(AutoConfig.from_pretrained(model), AutoTokenizer.from_pretrained(model))


def name_adapter_base(folder: str | Path, base: str) -> None:
    """Rewrite a saved adapter's base_model_name_or_path to its base's portable name."""
    name = portable_base_name(base)
    path = Path(folder, "adapter_config.json")
    if name is None or not path.exists():
        return
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_xtallm_config(path: str | Path, config: FinetuneConfig, identity: dict[str, Any] | None = None) -> None:
    """What a sampler needs to know about the model: text format, conditions, base (and, for an adapter,
    the base's identity)."""
    info = {
        "fmt": config.data.fmt,
        "conditions": config.data.conditions,
        "dims": config.data.dims,
        "base_model": config.model.base,
        "method": config.model.method,
        "max_length": config.data.max_length,
    }
    if identity is not None:
        info["base_identity"] = identity
    Path(path, XTALLM_CONFIG).write_text(json.dumps(info, indent=2))


def read_xtallm_config(path: str | Path) -> dict:
    file = Path(path, XTALLM_CONFIG)
    return json.loads(file.read_text()) if file.exists() else {"fmt": "wyckoff"}


PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "xtallm-crystal-11m"
DEFAULT_ADAPTERS = {"layer_group": "xtallm-crystal-11m-lg-lora", "stability": "xtallm-crystal-11m-stability-lora"}
# Shipped adapters of other bases, loadable by name (`--adapter smollm2-135m-crystal-lora` with `--model smollm2`)
SHIPPED_ADAPTERS = (*DEFAULT_ADAPTERS.values(), "smollm2-135m-crystal-lora")


def default_model_path() -> Path:
    """Folder of the embedded default crystal LM (package data: works from a wheel too)."""
    path = PRETRAINED_DIR / DEFAULT_MODEL
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the embedded default model is missing at {path} (broken install?)")
    return path


def default_adapter_path(task: str = "layer_group") -> Path:
    """Folder of a shipped LoRA adapter for the default model (`layer_group`: dim=2 lg=N prompts; `stability`: the
    default after `xtallm improve`'s filtered rejection-sampling rounds, docs/benchmarks.md issue 28)."""
    if task not in DEFAULT_ADAPTERS:
        raise ValueError(f"no shipped adapter for {task!r}; known: {', '.join(DEFAULT_ADAPTERS)}")
    path = PRETRAINED_DIR / DEFAULT_ADAPTERS[task]
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"the shipped adapter {task!r} is missing at {path} (broken install?)")
    return path


def local_model(name: str) -> str | None:
    """The folder `name` means here: a shipped model or adapter by its name, a GGUF model (a .gguf
    file, a folder holding one, or a short name like `smollm2`: converted once into the cache folder,
    see llm/gguf.py), or an existing folder; None otherwise."""
    if name in (DEFAULT_MODEL, *SHIPPED_ADAPTERS) and (PRETRAINED_DIR / name).is_dir():
        return str(PRETRAINED_DIR / name)
    from .gguf import convert_gguf, find_gguf

    gguf = find_gguf(name)
    if gguf is not None:
        return str(convert_gguf(gguf))
    path = Path(name).expanduser()
    return str(path) if path.exists() else None


def resolve_base(name: str) -> str:
    """`model.base` of a recipe: `from_scratch`, or a model as `resolve_model` takes it (GGUF included)."""
    return name if name == "from_scratch" else resolve_model(name, "model.base")


def resolve_model(name: str | None, what: str = "--model") -> str:
    """The model a user named: None -> the embedded default; a folder; or a hub id they typed.

    A path that does not exist is an error naming it, never a download: only a bare `owner/name`
    whose owner is no folder here is taken as a hub id."""
    if name is None:
        return str(default_model_path())
    local = local_model(name)
    if local is not None:
        if Path(local).is_dir() and not (Path(local) / "config.json").exists() and not (Path(local) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{what} {name}: the folder holds no model (no config.json)")
        return local
    if is_hub_id(name):
        return name
    raise FileNotFoundError(f"{what} {name}: no such folder (and not a hub id like owner/name)")


def resolve_adapter(name: str | None) -> str | None:
    """An adapter folder, a shipped adapter by task (`layer_group`) or name, or a hub id the user typed."""
    if name is None:
        return None
    if name in DEFAULT_ADAPTERS:
        return str(default_adapter_path(name))
    local = local_model(name)
    if local is not None:
        if not Path(local, "adapter_config.json").exists():
            raise FileNotFoundError(f"--adapter {name}: not a LoRA adapter folder (no adapter_config.json)")
        return local
    if is_hub_id(name):
        return name
    raise FileNotFoundError(f"--adapter {name}: no such folder, shipped adapter ({', '.join(DEFAULT_ADAPTERS)}) or hub id")


def load_default_model(adapter: str | None = None, device: str | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) of the embedded default, optionally with a shipped adapter.

    Weights are stored in bf16 to keep the repository small; on CPU they are loaded as fp32
    (bf16 matmuls are slow or missing on many CPUs), on GPU as bf16.
    """
    if device is None:
        from xtallm.configs.training import default_device

        device = default_device()
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(default_adapter_path(adapter))).to(device)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))
