"""Merge a LoRA adapter into its base model, for serving without PEFT.

    python llm/merge.py --adapter runs/my-adapter --out runs/my-merged [--base path/or/hub-id]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


from xtallm.llm.model import XTALLM_CONFIG


def merge(adapter: str | Path, out: str | Path, base: str | None = None, max_shard_size: str = "2GB") -> Path:
    """Write base + adapter as one plain model (with tokenizer and xtallm.json) to `out`."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    peft_config = PeftConfig.from_pretrained(str(adapter))
    base = base or peft_config.base_model_name_or_path
    if not base:
        raise ValueError(f"{adapter}: the adapter does not name its base model; pass --base")
    model = AutoModelForCausalLM.from_pretrained(base)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer_source = adapter if Path(adapter, "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(out))
    if Path(adapter, XTALLM_CONFIG).exists():
        shutil.copy(Path(adapter, XTALLM_CONFIG), out / XTALLM_CONFIG)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", default=None, help="base model (default: the one the adapter names)")
    parser.add_argument("--max-shard-size", default="2GB")
    args = parser.parse_args(argv)
    print(f"merged model -> {merge(args.adapter, args.out, args.base, args.max_shard_size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
