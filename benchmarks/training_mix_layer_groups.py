"""Per-layer-group match (uniform prompts) and conditional accuracy of decoded samples in runs/mix2/eval -> benchmarks/results/training_mix_v2_layer_groups.json. Run from the repo root."""
import json, sys, warnings, statistics
from collections import defaultdict
from xtallm.tokenization.formats import parse_cif
from xtallm.tokenization.record import detect_group
from xtallm.pipelines.evaluation import metrics as M
out = {}
for name in ["joint_2d", "2d_2d", "joint_cond"]:
    rows = [json.loads(l) for l in open(f"runs/mix2/eval/{name}/samples.jsonl")]
    per_lg = defaultdict(lambda: [0, 0, 0])  # prompts, parsed, matched
    per_set = defaultdict(lambda: [0, 0, 0])
    cond = defaultdict(lambda: [0, 0, 0])  # prompts, parsed, honoured
    for r in rows:
        dim = r["conditions"]["dim"]
        key = r["conditions"].get("lg")
        s = None; g = None
        if r["ok"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    s = parse_cif(r["cif"]); g = detect_group(s, dim, symprec=0.1)
                except Exception:
                    s = None
        if dim == 2:
            for d in (per_lg[key], per_set[r["set"]]) if r["set"] == "uniform" else (per_set[r["set"]],):
                d[0] += 1; d[1] += s is not None; d[2] += (s is not None and g == key)
        else:
            kind = r["set"]; c = cond[kind]; c[0] += 1
            if s is not None:
                c[1] += 1
                try:
                    c[2] += bool(M.condition_accuracy({kind: r["conditions"][kind]}, s, g).get(kind))
                except Exception:
                    pass
    res = {}
    if per_lg:
        rates = {lg: v[2] / v[0] for lg, v in sorted(per_lg.items())}
        res["per_layer_group"] = {str(lg): {"prompts": v[0], "parsed": v[1], "matched": v[2]} for lg, v in sorted(per_lg.items())}
        res["groups_with_a_match"] = sum(v[2] > 0 for v in per_lg.values())
        res["min_rate"] = min(rates.values()); res["median_rate"] = statistics.median(rates.values())
        res["sets"] = {k: {"prompts": v[0], "parsed": v[1], "matched": v[2], "match_of_parsed": v[2] / max(v[1], 1)} for k, v in per_set.items()}
    if cond:
        res["conditional"] = {k: {"prompts": v[0], "parsed": v[1], "honoured": v[2], "honoured_of_parsed": v[2] / max(v[1], 1)} for k, v in cond.items()}
    out[name] = res
    print(name, {k: v for k, v in res.items() if k != "per_layer_group"}, flush=True)
json.dump(out, open("benchmarks/results/training_mix_v2_layer_groups.json", "w"), indent=1)
