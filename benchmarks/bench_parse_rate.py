"""Parse rate of a model's samples with and without grammar-constrained decoding (vLLM).

    python benchmarks/bench_parse_rate.py --model DIR [--num-samples 200] [--condition sg=225 ...]

Same engine, same prompts and seeds for both runs. Writes benchmarks/results/parse_rate.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


from collections import Counter

from xtallm.pipelines.samples import read_jsonl as read_samples
from xtallm.pipelines.sample import SampleJob, SampleOptions, make_sampler, run_sample
from xtallm.tokenization.conditions import parse_condition_args

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--condition", action="append", default=[])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "parse_rate.json"))
    args = parser.parse_args()
    conditions = parse_condition_args(args.condition)
    work = Path(tempfile.mkdtemp(prefix="parse-rate-"))
    base = SampleJob(str(work / "unused"), options=SampleOptions(model=args.model))
    engine = make_sampler(base)
    results = {"model": args.model, "conditions": conditions, "num_samples": args.num_samples}
    for constrained in (False, True):
        out = work / ("constrained" if constrained else "free")
        job = SampleJob(str(out), num_samples=args.num_samples, conditions=conditions,
                        options=SampleOptions(model=args.model, constrained=constrained))
        summary = run_sample(job, sampler=engine)
        # "ParseError: line 3: site 1: ..." -> the message without the line number
        errors = Counter(r["error"].split(": ", 2)[-1][:60] for r in read_samples(out / "samples.jsonl") if not r["ok"])
        results["constrained" if constrained else "unconstrained"] = {**summary, "top_errors": errors.most_common(5)}
        print(f"{'constrained' if constrained else 'unconstrained':13s}: parse rate {summary['parse_rate']:.3f} "
              f"({summary['parsed']}/{summary['samples']}), {summary['samples_per_s']:.1f} samples/s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
