"""Benchmark: dataset preparation speed and encode->decode fidelity on the real data.

    python benchmarks/bench_tokenization.py [--data-dir ../shared/data] [--num-proc 2]

Prints a table and writes benchmarks/results/tokenization.json. Figures are quoted in
docs/benchmarks.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

from xtallm.tokenization import get_format
from xtallm.tokenization.check import roundtrip_many, summarize
from xtallm.tokenization.data import PrepareOptions, prepare_dataset
from xtallm.tokenization.formats import parse_cif
from xtallm.tokenization.tokenizer import build_crystal_tokenizer

ROUND_TRIP_SETS = [
    ("MP-20 val", "mp20/val.csv.xz", "cif", 3),
    ("MC2D", "twod/mc2d_258.csv.xz", "cif_layer_std", 2),
    ("2DMatPedia", "twod/2dmatpedia_5914.csv.xz", "cif_layer_std", 2),
]


def time_prepare(path: Path, num_proc: int, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            prepared = prepare_dataset(path, PrepareOptions(), num_proc=num_proc, cache_dir=cache, use_cache=False)
            times.append(time.perf_counter() - start)
    return {"rows": prepared.n_rows, "ok": len(prepared.dataset), "seconds": times, "median_s": statistics.median(times)}


def token_lengths(path: Path, n: int) -> dict:
    tok = build_crystal_tokenizer()
    cifs = pd.read_csv(path).cif.sample(n, random_state=0)
    out = {}
    for name in ("wyckoff", "xyz"):
        fmt = get_format(name)
        lengths = [len(tok(fmt.encode(parse_cif(c)))["input_ids"]) for c in cifs]
        out[name] = {"mean_tokens": statistics.mean(lengths), "max_tokens": max(lengths)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "tokenization.json"))
    args = parser.parse_args()
    data = Path(args.data_dir)

    results: dict = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "num_proc": args.num_proc}
    results["prepare_mp20_val"] = time_prepare(data / "mp20/val.csv.xz", args.num_proc, args.repeats)
    for label, rel, column, dim in ROUND_TRIP_SETS:
        cifs = pd.read_csv(data / rel)[column].tolist()
        start = time.perf_counter()
        checks = roundtrip_many(cifs, dim, num_proc=args.num_proc)
        results[f"roundtrip {label}"] = {**summarize(checks), "seconds": time.perf_counter() - start}
    results["tokens_mp20_val_500"] = token_lengths(data / "mp20/val.csv.xz", 500)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    p = results["prepare_mp20_val"]
    print(f"prepare MP-20 val ({p['rows']} rows, {args.num_proc} procs): median {p['median_s']:.1f} s over {args.repeats} runs "
          f"({', '.join(f'{t:.1f}' for t in p['seconds'])}); {p['ok']} encoded")
    print(f"{'set':12s} {'n':>6s} {'encoded':>8s} {'matched':>8s} {'group kept':>11s}")
    for label, *_ in ROUND_TRIP_SETS:
        r = results[f"roundtrip {label}"]
        print(f"{label:12s} {r['n']:6d} {r['encoded_rate']:8.4f} {r['match_rate']:8.4f} {r['group_kept_rate']:11.4f}")
    for name, t in results["tokens_mp20_val_500"].items():
        print(f"tokens per MP-20 crystal, {name}: mean {t['mean_tokens']:.1f}, max {t['max_tokens']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
