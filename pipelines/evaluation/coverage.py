"""Coverage COV-R / COV-P as CDVAE defines it (Xie et al. 2021, scripts/compute_metrics.py).

Fingerprints:
- structure: matminer's `CrystalNNFingerprint.from_preset("ops")` of every site, averaged over
  the sites (61 numbers);
- composition: matminer's Magpie `ElementProperty` (132 numbers), standardised with CDVAE's
  fixed MP-20 means/stds (NaN -> 0).

COV-R: share of reference crystals that have a sample within both cutoffs (structure distance
<= struct_cutoff AND composition distance <= comp_cutoff, Euclidean). COV-P: number of samples
that have a reference crystal within both cutoffs, divided by the number of samples *before*
filtering (CDVAE's convention; here: every sample, unparseable ones included). Only samples that
are valid (structure + composition) and whose fingerprint could be computed enter the numerator.

Speed (the CrystalNN fingerprint is the bottleneck, ~0.3 s per MP-20 crystal with matminer as is):
two exact shortcuts give the same numbers (tested against matminer's own featurizer):
1. a site's fingerprint depends only on its environment, so symmetry-equivalent sites
   (spglib, symprec 1e-3) have the same fingerprint: one site per orbit, weighted by its
   multiplicity;
2. matminer evaluates each order parameter with its own `LocalStructOrderParams`, repeating the
   neighbour geometry for each of the ~4 motifs of a coordination number; here the motifs of one
   coordination number share one `LocalStructOrderParams` (same types, same parameters).
Reference fingerprints are cached on disk, keyed by the file's content hash.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from pymatgen.core import Composition, Structure

from ..parallel import Workers, as_workers, map_ordered

# CDVAE's cutoffs per data set (structure fingerprint distance, scaled composition distance)
COV_CUTOFFS: dict[str, tuple[float, float]] = {
    "mp20": (0.4, 10.0),
    "carbon": (0.2, 4.0),
    "perovskite": (0.2, 4.0),
}
FINGERPRINT_VERSION = "1"
STRUCT_FP_LEN = 61
# order parameters with pymatgen's "south pole" term (see OpsFingerprinter.__init__)
SOUTH_POLE_TYPES = frozenset({"tri_bipyr", "sq_bipyr", "pent_bipyr", "hex_bipyr", "oct_max", "sq_plan_max", "hex_plan_max", "see_saw_rect"})
COMP_FP_LEN = 132

# CDVAE's composition scaler (cdvae/common/constants.py, MIT licence): means and standard
# deviations of the 132 Magpie features over MP-20, fixed so distances compare across papers.
COMP_SCALER_MEANS = np.array([
    21.194441759304013, 58.20212663122281, 37.0076848719188, 36.52738520455582, 13.350626389725019,
    29.468922184630255, 28.71735137747704, 78.8868535524408, 50.16950217496375, 59.56764743604155,
    19.020429484306277, 61.335572740454325, 47.14515893344343, 141.75135923307818, 94.60620029962553,
    85.95794070476977, 34.07300576173523, 68.06189371516912, 637.9862061297893, 1817.2394155466848,
    1179.2532094169414, 1127.2743149568837, 431.51034284549826, 909.1060025135899, 3.7744320927984534,
    13.673707104881585, 9.899275012083132, 9.620186927095652, 3.8426065581251856, 9.96950217496375,
    3.305461575640406, 5.483035282745288, 2.1775737071048815, 4.215114560306594, 0.8206087101824266,
    3.732092798453359, 109.16732721121315, 179.5570323827936, 70.38970517158047, 136.0978305229613,
    27.027545809538527, 119.16713388110198, 1.2721433060967857, 2.4614001837260617, 1.1892568776289631,
    1.9844483610247092, 0.4691462290494881, 2.100143582306204, 1.4829869502174964, 1.9899951667472209,
    0.5070082165297245, 1.7956250375970633, 0.2056251946617602, 1.745867568873852, 0.05650072498791687,
    2.3618656355727405, 2.3053649105848235, 1.2829636137262992, 0.9995555685850794, 1.5150314161430642,
    0.7731271145480909, 7.4648139197680035, 6.691686805219913, 4.010677272036105, 2.612307566507693,
    3.303528274528758, 0.2739487675205413, 5.889753504108265, 5.615804736587724, 2.3244356612494683,
    2.1426251769710905, 1.4464475592073465, 4.739246012566457, 14.578395360077332, 9.839149347510874,
    9.413701584608935, 3.537059747455868, 8.550410826486225, 0.008119864668922184, 0.43286611889801835,
    0.4247462542290962, 0.16687837041055423, 0.17139889490813626, 0.10898985016916385, 0.06283228612856452,
    2.6573707104881583, 2.594538424359594, 1.219602938224228, 1.0596390454742999, 1.1120831319478008,
    0.14842919284678588, 3.8473658772353794, 3.6989366843885936, 1.4541605082183982, 1.3862277372859781,
    0.8018849685838569, 0.03542774287095215, 2.4474625422909617, 2.4120347994200095, 0.7745217539010397,
    0.9145812330586208, 0.3198646689221846, 1.552730787820203, 6.910681488641856, 5.357950700821653,
    3.615163570754227, 1.9072256165179793, 2.6702271628806185, 14.608536589568727, 34.83222477045747,
    20.223688180890715, 22.47901710732293, 7.17674504190757, 18.641837024143584, 0.009066988883518605,
    0.9185191396809959, 0.9094521507974755, 0.4368550481994018, 0.38905942883427047, 0.48375558240695804,
    0.0012985909686158003, 0.21708593995837092, 0.21578734898975546, 0.08167977375391729,
    0.08155386250705281, 0.06036340747305611, 116.32010633156113, 217.5905751570807, 101.27046882551957,
    162.87154200548844, 41.920624308665566, 136.4664572257129,
])
COMP_SCALER_STDS = np.array([
    16.35781741152948, 20.189540126474725, 20.516298414514758, 16.816765336550194, 7.966591328222124,
    22.270791076753067, 21.802116630115243, 12.804546460581966, 24.756629388687983, 13.930306216047477,
    10.214535652334533, 27.801612936980938, 39.74031558353379, 54.269739685575814, 53.70466607591569,
    42.852342044453444, 20.78341194242935, 56.28783510219931, 563.8004405882157, 732.0722574247563,
    736.2122907972664, 606.351603075103, 272.62646060896407, 810.6156779688841, 3.0362262146833428,
    3.2075174256751606, 4.0633818989245665, 2.9738244769894764, 1.7805586029644034, 5.643243225066782,
    1.1994336274579853, 0.8939013979423364, 1.2297581799896975, 1.0066021334519983, 0.49129747526397105,
    1.4159553146070951, 31.754756468836774, 28.054241463256226, 38.16336054795611, 25.83485338379922,
    15.388376641904662, 39.67137484594156, 0.31988340032011076, 0.6833658037760536, 0.7464197945553585,
    0.4881349085029781, 0.3176591553643101, 0.8601748146737138, 0.5864801661863596, 0.10048913710210677,
    0.5836289120986499, 0.2811748167435902, 0.2468696279341553, 0.5007375747433073, 0.37237566669029587,
    1.7235989187720187, 1.7058836077743305, 1.1558859351244697, 0.7677842566598179, 1.9203550253462733,
    2.1289400248865182, 3.5326064169848332, 3.708508303762512, 2.8709941136664567, 1.6110681295257014,
    4.310192504023775, 1.6644182118209292, 6.228287671164213, 6.1200848808512305, 3.1986202996110302,
    2.4492978142248867, 4.030497343977163, 3.662028270049814, 6.8192125550358345, 6.614243783887738,
    4.334987449618594, 2.568319610320196, 5.9494890200106925, 0.08974370432893491, 0.4954725441517777,
    0.494304434278516, 0.2309340434963803, 0.2072873961103969, 0.31162647950590266, 0.39805702757060923,
    1.8111691089355726, 1.7973395144505941, 0.9486995373104102, 0.7538753151875139, 1.5233177017753785,
    0.7952606701778913, 3.711190225170556, 3.638721437232604, 1.7171165424006831, 1.4307904413917036,
    2.1047820817622904, 0.49193748323158065, 4.064840532426175, 4.035286619587313, 1.4858577214526643,
    1.5799117659864677, 1.6130080156145745, 1.555249156140194, 4.776932951077492, 4.569790780459629,
    2.224617778217326, 1.7217507416156546, 2.5969733650703763, 7.215001918238936, 19.252513469778584,
    18.775394044177858, 9.447222764774764, 6.7467931836261235, 11.106825644766616, 0.27206794253092115,
    1.6449321034573106, 1.6236282792648686, 0.8506917026741503, 0.7020945355184042, 1.2281895279350408,
    0.04134438177238229, 0.5508855867341717, 0.5486095551438679, 0.24239297524046477, 0.2127779137935831,
    0.3036750942874694, 80.06063945615361, 21.345794811194104, 80.16475677581042, 52.58533928558554,
    35.40836791039412, 85.980205895116,
])


class OpsFingerprinter:
    """CrystalNN "ops" site fingerprints, the same numbers as matminer's, computed faster.

    Configuration comes from matminer's own preset (its CrystalNN settings, op types and motif
    parameters); only the bookkeeping differs (see the module docstring).
    """

    def __init__(self, symprec: float = 1e-3):
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint
        from matminer.featurizers.site.fingerprint import load_cn_motif_op_params
        from pymatgen.analysis.local_env import LocalStructOrderParams

        self.reference = CrystalNNFingerprint.from_preset("ops")
        self.cnn = self.reference.cnn
        self.symprec = symprec
        params = load_cn_motif_op_params()
        # per coordination number: (positions in the fingerprint, LocalStructOrderParams of all its motifs)
        # per coordination number: its weight's position and groups of (positions, LocalStructOrderParams)
        self.layout: list[tuple[int, int, list[tuple[list[int], object]]]] = []
        position = 0
        for cn in range(1, max(self.reference.op_types) + 1):
            wt_pos, plain, south_pole = -1, [], []
            for t in self.reference.op_types.get(cn, []):
                if t == "wt":
                    wt_pos = position
                else:
                    ot, p = t, None
                    if cn in params and t in params[cn]:
                        ot = params[cn][t][0]
                        if len(params[cn][t]) > 1:
                            # plain floats: the YAML's mapping type costs ~4% of a fingerprint in lookups
                            p = {k: float(v) if isinstance(v, float) else v for k, v in params[cn][t][1].items()}
                    (south_pole if ot in SOUTH_POLE_TYPES else plain).append((position, ot, p))
                position += 1
            # pymatgen adds the "south pole" term of neighbour m only for the LAST type of an
            # LocalStructOrderParams (a loop variable leaks), so at most one such type per group, last
            groups = [plain + south_pole[:1]] + [[sp] for sp in south_pole[1:]]
            built = [([g[0] for g in group], LocalStructOrderParams([g[1] for g in group], parameters=[g[2] for g in group]))
                     for group in groups if group]
            self.layout.append((cn, wt_pos, built))
        self.length = position

    def site(self, structure: Structure, idx: int) -> np.ndarray:
        """Fingerprint of one site (the same vector as matminer's `featurize(structure, idx)`)."""
        nndata = self.cnn.get_nn_data(structure, idx)
        out = np.zeros(self.length)
        for cn, wt_pos, groups in self.layout:
            wt = nndata.cn_weights.get(cn, 0)
            if wt_pos >= 0:
                out[wt_pos] = wt
            if not groups or wt == 0:
                continue
            neighbours = [d["site"] for d in nndata.cn_nninfo[cn]]
            sites = [structure[idx], *neighbours]
            indices = list(range(1, len(neighbours) + 1))
            for positions, lsop in groups:
                values = lsop.get_order_parameters(sites, 0, indices_neighs=indices)
                for pos, value in zip(positions, values):
                    out[pos] = wt * (value or 0)
        return out

    def orbits(self, structure: Structure) -> tuple[list[int], np.ndarray]:
        """One representative site per symmetry orbit and the orbit sizes (all sites if spglib fails)."""
        import spglib

        try:
            cell = (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)
            dataset = spglib.get_symmetry_dataset(cell, symprec=self.symprec)
            equivalent = np.asarray(dataset.equivalent_atoms)
        except Exception:  # spglib raises or returns None on degenerate cells
            return list(range(len(structure))), np.ones(len(structure))
        reps, counts = np.unique(equivalent, return_counts=True)
        return reps.tolist(), counts.astype(float)

    def structure(self, structure: Structure) -> np.ndarray:
        """Mean site fingerprint, as CDVAE's `np.array(site_fps).mean(axis=0)`."""
        reps, counts = self.orbits(structure)
        sites = np.array([self.site(structure, i) for i in reps])
        return (sites * counts[:, None]).sum(axis=0) / counts.sum()


_FINGERPRINTER: OpsFingerprinter | None = None
_MAGPIE = None


def _fingerprinter() -> OpsFingerprinter:
    global _FINGERPRINTER
    if _FINGERPRINTER is None:
        _FINGERPRINTER = OpsFingerprinter()
    return _FINGERPRINTER


def composition_fingerprint(composition: Composition) -> np.ndarray:
    """Raw (unscaled) Magpie features of a composition, as CDVAE's `ElementProperty.from_preset('magpie')`."""
    global _MAGPIE
    if _MAGPIE is None:
        from matminer.featurizers.composition.composite import ElementProperty

        _MAGPIE = ElementProperty.from_preset("magpie", impute_nan=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_MAGPIE.featurize(composition), dtype=float)


def fingerprint(structure: Structure | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(structure fp, raw composition fp) of one crystal; None when either cannot be computed."""
    if structure is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = _fingerprinter().structure(structure)
            c = composition_fingerprint(structure.composition)
    except Exception:  # CDVAE: a crystal whose fingerprint fails counts as not covered
        return None
    if not np.all(np.isfinite(s)):
        return None
    return s, c


def _fingerprint_cif(cif: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    from ..samples import read_cif

    return fingerprint(read_cif(cif)) if cif is not None else None


def _stack(results: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of NaN for crystals without a fingerprint, so indices stay aligned with the input."""
    s = np.full((len(results), STRUCT_FP_LEN), np.nan)
    c = np.full((len(results), COMP_FP_LEN), np.nan)
    for i, r in enumerate(results):
        if r is not None:
            s[i], c[i] = r
    return s, c


def fingerprints(structures: Sequence[Structure | None], workers: "Workers | int" = 2, desc: str = "fingerprints",
                 keys: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Structure and raw composition fingerprints of many crystals, in parallel (NaN rows where none); `keys` (e.g.
    each crystal's CIF text): crystals with equal keys are fingerprinted once."""
    return _stack(map_ordered(fingerprint, structures, as_workers(workers), desc, keys=keys))


def fingerprints_of_cifs(cifs: Sequence[str | None], workers: "Workers | int" = 2, desc: str = "fingerprints") -> tuple[np.ndarray, np.ndarray]:
    """As `fingerprints`, from CIF text (cheaper to send to worker processes than structures)."""
    return _stack(map_ordered(_fingerprint_cif, cifs, as_workers(workers), desc))


def cache_dir() -> Path:
    return Path(os.environ.get("XTALLM_CACHE", Path.home() / ".cache" / "xtallm")) / "fingerprints"


def file_hash(path: str | Path, extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"{FINGERPRINT_VERSION}:{extra}:".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def reference_fingerprints(csv: str | Path, cifs: Sequence[str | None] | None = None, workers: "Workers | int" = 2,
                           column: str = "cif", use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprints of a reference table, cached on disk under XTALLM_CACHE/fingerprints/<content hash>.npz.

    `cifs` (the table's CIF column, already read) saves reading the table again on a cache miss.
    """
    path = cache_dir() / f"{file_hash(csv, column)}.npz"
    if use_cache and path.exists():
        with np.load(path) as data:
            return data["struct"], data["comp"]
    if cifs is None:
        import pandas as pd

        table = pd.read_csv(csv)
        if column not in table.columns:
            raise ValueError(f"{csv}: no '{column}' column to fingerprint")
        cifs = table[column].tolist()
    struct_fps, comp_fps = fingerprints_of_cifs(cifs, workers, desc=f"fingerprinting {Path(csv).name}")
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, struct=struct_fps, comp=comp_fps)
        os.replace(tmp, path)
    return struct_fps, comp_fps


def scale_composition(comp_fps: np.ndarray) -> np.ndarray:
    """CDVAE's CompScaler: (x - mean) / std with MP-20's fixed statistics, NaN -> 0."""
    scaled = (np.asarray(comp_fps, dtype=float) - COMP_SCALER_MEANS) / COMP_SCALER_STDS
    return np.where(np.isnan(scaled), 0.0, scaled)


def _nearest(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise min distance a->b and column-wise min distance b->a, in chunks (10k x 10k fits in memory)."""
    from scipy.spatial.distance import cdist

    row_min = np.empty(len(a))
    col_min = np.full(len(b), np.inf)
    for start in range(0, len(a), chunk):
        d = cdist(a[start:start + chunk], b)
        row_min[start:start + chunk] = d.min(axis=1)
        np.minimum(col_min, d.min(axis=0), out=col_min)
    return row_min, col_min


def coverage(sample_struct: np.ndarray, sample_comp: np.ndarray, ref_struct: np.ndarray, ref_comp: np.ndarray,
             n_samples: int, struct_cutoff: float, comp_cutoff: float) -> dict[str, float | int | None]:
    """COV-R, COV-P and CDVAE's mean minimum distances (AMSD/AMCD).

    The sample arrays hold the valid samples (NaN rows: no fingerprint, dropped here as CDVAE's
    `filter_fps` does); `n_samples` is the number of samples before any filtering.
    """
    keep = np.all(np.isfinite(sample_struct), axis=1)  # a failed fingerprint is a row of NaN
    ref_keep = np.all(np.isfinite(ref_struct), axis=1)
    s_struct, s_comp = sample_struct[keep], scale_composition(sample_comp[keep])
    r_struct, r_comp = ref_struct[ref_keep], scale_composition(ref_comp[ref_keep])
    if len(r_struct) == 0:
        raise ValueError("no reference crystal has a coverage fingerprint")
    if len(s_struct) == 0:
        return {"cov_recall": 0.0, "cov_precision": 0.0, "amsd_recall": None, "amsd_precision": None,
                "amcd_recall": None, "amcd_precision": None, "n_fingerprinted": 0, "n_reference_fingerprinted": int(len(r_struct))}
    # precision: each sample's nearest reference; recall: each reference's nearest sample.
    # CDVAE takes the two minima independently (structure and composition need not be the same crystal).
    struct_prec, struct_rec = _nearest(s_struct, r_struct)
    comp_prec, comp_rec = _nearest(s_comp, r_comp)
    return {
        "cov_recall": float(np.mean((struct_rec <= struct_cutoff) & (comp_rec <= comp_cutoff))),
        "cov_precision": float(np.sum((struct_prec <= struct_cutoff) & (comp_prec <= comp_cutoff)) / n_samples),
        "amsd_recall": float(struct_rec.mean()),
        "amsd_precision": float(struct_prec.mean()),
        "amcd_recall": float(comp_rec.mean()),
        "amcd_precision": float(comp_prec.mean()),
        "n_fingerprinted": int(len(s_struct)),
        "n_reference_fingerprinted": int(len(r_struct)),
    }


def cutoffs(name_or_values: str | Iterable[float]) -> tuple[float, float]:
    """CDVAE's cutoffs by data set name (mp20, carbon, perovskite) or an explicit (struct, comp) pair."""
    if isinstance(name_or_values, str):
        if name_or_values not in COV_CUTOFFS:
            raise ValueError(f"unknown coverage cutoff set {name_or_values!r}: use one of {sorted(COV_CUTOFFS)} or 'STRUCT,COMP'")
        return COV_CUTOFFS[name_or_values]
    struct, comp = (float(x) for x in name_or_values)
    return struct, comp
