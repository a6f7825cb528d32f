"""Wheels that the GPU machine (Python 3.12, no network) needs for hull builds and MLFF relaxations.

    python benchmarks/device_wheels.py [--out .whl]

The GPU image has torch, numpy, scipy, pandas, e3nn, torch-geometric, matplotlib, narwhals and
scikit-learn, but not pymatgen, ASE, SevenNet or moyopy. This downloads those (cp312,
manylinux) at the versions this project's venv pins, then trims what a relaxation never loads
so that the wheels and the working tree fit the device tool's 64 MiB carry: SevenNet's other
pretrained potentials and its D3 extension (43 -> 10 MB), plotly's JavaScript bundles (9.7 -> 3.7 MB;
pymatgen's phase diagram module imports plotly at import time). On the device:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

PACKAGES = ["pymatgen", "pymatgen-core", "sevenn", "ase", "moyopy", "monty", "ruamel.yaml", "orjson", "palettable",
            "plotly", "spglib", "uncertainties", "braceexpand", "matscipy"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "any"]
TRIM = {
    "sevenn": lambda n: (n.endswith(".pth") and "SevenNet_0__11Jul2024" not in n) or "pair_d3" in n or n.endswith(".so"),
    "plotly": lambda n: n.startswith(("plotly/package_data/", "plotly/labextension/")) or n.split("/")[0].endswith(".data"),
}


def trim(wheel: Path, drop) -> None:
    """Rewrite `wheel` without the files `drop` names (and without their RECORD lines)."""
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if drop(info.filename):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"\n".join(line for line in data.split(b"\n") if not drop(line.split(b",")[0].decode()))
            zout.writestr(info, data)
    os.replace(tmp, wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".whl")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(out), *pins]
    subprocess.run(cmd, check=True)
    for name, drop in TRIM.items():
        for wheel in out.glob(f"{name}-*.whl"):
            trim(wheel, drop)
    total = sum(w.stat().st_size for w in out.glob("*.whl"))
    print(f"{len(list(out.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB -> {out}")


if __name__ == "__main__":
    main()
