"""vLLM engine start and decoding speed with and without torch.compile (`--vllm-compile yes|no`), same machine.

    python benchmarks/bench_vllm_compile.py [--model llm/pretrained/xtallm-crystal-11m] [--n 256]

Each setting runs in a fresh process (a started engine cannot change it): engine start, then N unconstrained
`dim=3` samples (temperature 1, max 400 tokens, seeded). Writes benchmarks/results/vllm_compile_<device>.json.
The `auto` default picks by these figures: compile on a GPU (CUDA graphs), not on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = """
import json, sys, time
def main():
    from xtallm.llm.sampling import SamplingOptions, VllmSampler
    from vllm import SamplingParams
    t0 = time.perf_counter()
    s = VllmSampler(sys.argv[1], None, SamplingOptions(vllm_compile=sys.argv[2], dtype="bfloat16"), max_model_len=1024)
    t1 = time.perf_counter()
    out = s.llm.generate(["dim=3\\n"] * int(sys.argv[3]), SamplingParams(temperature=1.0, max_tokens=400, seed=1), use_tqdm=False)
    t2 = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in out)
    print("RESULT " + json.dumps({"start_s": round(t1 - t0, 1), "decode_s": round(t2 - t1, 1), "tokens": tokens,
                                  "tokens_per_s": round(tokens / (t2 - t1), 1)}), flush=True)
    import os; os._exit(0)
if __name__ == "__main__":
    main()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm/pretrained/xtallm-crystal-11m")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for choice in ("no", "yes"):
        proc = subprocess.run([sys.executable, "-c", CHILD, args.model, choice, str(args.n)], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}, timeout=1800)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        results[f"compile_{choice}"] = json.loads(line[len("RESULT "):])
        results[f"compile_{choice}"]["total_s"] = round(results[f"compile_{choice}"]["start_s"] + results[f"compile_{choice}"]["decode_s"], 1)
        print(choice, results[f"compile_{choice}"], flush=True)
    yes, no = results["compile_yes"], results["compile_no"]
    summary = {"device": device, "model": args.model, "n": args.n, **results,
               "start_saved_by_eager_s": round(yes["start_s"] - no["start_s"], 1),
               "decode_speed_eager_vs_compiled": round(no["tokens_per_s"] / yes["tokens_per_s"], 3),
               "samples_where_compiling_pays_off": round((yes["start_s"] - no["start_s"]) / max(
                   no["decode_s"] / args.n - yes["decode_s"] / args.n, 1e-9)) if no["decode_s"] > yes["decode_s"] else None,
               "command": f"python benchmarks/bench_vllm_compile.py --model {args.model} --n {args.n}", "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out or HERE / "results" / f"vllm_compile_{device}.json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
