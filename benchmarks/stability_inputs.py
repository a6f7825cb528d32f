"""The inputs of issue 15's stability run, as small as they go (the device call carries 64 MiB in all).

    python benchmarks/stability_inputs.py --data ../shared/data --out .dev/s15

`known.csv.xz`: every bulk crystal of the data folder (MP-20 val + train_partial, MPTS-52 val + test,
perov_5, carbon_24, WBM) with `id` (MP ids kept, so one material in two tables is one row; others
prefixed with their table), `source` and `cif`. Monolayers are left out: a slab in a cell with
vacuum is not a bulk phase for the hull.

    python benchmarks/stability_inputs.py --ship runs/s15/hull_sevennet_all_sources.csv.xz \
        --out configs/data/hull_sevennet_v1.csv.xz

writes the shipped hull from the device's single points (`xtallm hull build --relax-steps 0` of every known
crystal, merged): perov_5 and carbon_24 are left out, because their structures are far from SevenNet-0's minima
(median -0.149 eV/atom from single point to 1,500-step relaxation, against -0.001 for the rest; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import lzma
from pathlib import Path

import pandas as pd

SOURCES = {"mp20_val": "mp20/val.csv.xz", "mp20_train_partial": "mp20/train_partial.csv.xz", "mpts52_val": "mpts52/val.csv.xz",
           "mpts52_test": "mpts52/test.csv.xz", "perov5_val": "perov_5/val.csv.xz", "perov5_test": "perov_5/test.csv.xz",
           "carbon24_val": "carbon_24/val.csv.xz", "carbon24_test": "carbon_24/test.csv.xz", "wbm": "wbm/wbm_10k.csv.xz"}


def known(data: Path) -> pd.DataFrame:
    parts = []
    for name, rel in SOURCES.items():
        df = pd.read_csv(data / rel)
        ids = df["material_id"].astype(str) if "material_id" in df else pd.Series(range(len(df))).astype(str)
        mp = ids.str.match(r"^(mp|mvc)-\d+$")
        ids = ids.where(mp, name + ":" + ids)
        parts.append(pd.DataFrame({"id": ids, "source": name, "cif": df["cif"]}))
    table = pd.concat(parts, ignore_index=True)
    return table.drop_duplicates("id").reset_index(drop=True)


LEFT_OUT_OF_HULL = ("perov5", "carbon24")


def ship_hull(merged: Path, out: Path) -> None:
    hull = pd.read_csv(merged)
    kept = hull[~hull["source"].astype(str).str.startswith(LEFT_OUT_OF_HULL)]
    with lzma.open(out, "wt", preset=9 | lzma.PRESET_EXTREME) as f:
        kept.to_csv(f, index=False)
    print(f"{len(kept)} of {len(hull)} entries ({kept.source.value_counts().to_dict()}) -> {out} ({out.stat().st_size / 2**20:.2f} MiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="the shared/data folder: write known.csv.xz")
    parser.add_argument("--ship", help="a merged hull CSV: write the shipped hull (to --out, a file)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.ship:
        ship_hull(Path(args.ship), Path(args.out))
        return 0
    if not args.data:
        parser.error("give --data or --ship")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = known(Path(args.data))
    with lzma.open(out / "known.csv.xz", "wt", preset=9 | lzma.PRESET_EXTREME) as f:
        table.to_csv(f, index=False)
    print(f"{len(table)} known bulk crystals ({table.source.value_counts().to_dict()}) -> {out / 'known.csv.xz'} "
          f"({(out / 'known.csv.xz').stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
