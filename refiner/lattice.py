"""The lattice in DiffCSP++'s log-symmetric k-space, with each crystal family's mask.

A cell's metric G = L L^T (Gram matrix of the lattice vectors) is orientation free. Its
matrix logarithm S = log(G) / 2 is symmetric, and S = sum_i k_i B_i in a fixed basis B.
Every crystal family is then a set of k with some components fixed: cubic keeps only the
scale k6, hexagonal fixes k1 = -log(3)/4 (the 120 degree angle), and so on. Noise added to
the free components and nothing else keeps the lattice in its family exactly.

Bulk uses DiffCSP++'s six basis matrices. Layers use an in-plane basis (k1, k4, and the
in-plane scale k5) with the aperiodic axis fixed at c = 1 Å, so a fractional z equals a
Cartesian z in Å — the convention of the layer records.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_B = np.zeros((2, 6, 3, 3))
for _dim in (0, 1):
    _B[_dim, 0] = [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    _B[_dim, 1] = [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    _B[_dim, 2] = [[0, 0, 0], [0, 0, 1], [0, 1, 0]]
    _B[_dim, 3] = [[1, 0, 0], [0, -1, 0], [0, 0, 0]]
_B[1, 4] = np.diag([1.0, 1.0, -2.0])  # bulk (index 1 = dim 3)
_B[1, 5] = np.eye(3)
_B[0, 4] = np.diag([1.0, 1.0, 0.0])  # layer (index 0 = dim 2): in-plane scale
_B[0, 5] = np.diag([0.0, 0.0, 1.0])  # log c, fixed at 0 (c = 1 Å)
BASIS = {2: _B[0], 3: _B[1]}

HEX_K1 = -math.log(3.0) / 4.0  # off-diagonal of log(G)/2 for a 120 degree pair of equal vectors

# which of k1..k6 may change, per family; the others keep the value in FIXED
FREE = {
    (3, "triclinic"): (1, 1, 1, 1, 1, 1),
    (3, "monoclinic"): (0, 1, 0, 1, 1, 1),  # unique axis b: only the a-c angle
    (3, "orthorhombic"): (0, 0, 0, 1, 1, 1),
    (3, "tetragonal"): (0, 0, 0, 0, 1, 1),
    (3, "trigonal"): (0, 0, 0, 0, 1, 1),  # hexagonal axes
    (3, "hexagonal"): (0, 0, 0, 0, 1, 1),
    (3, "cubic"): (0, 0, 0, 0, 0, 1),
    (2, "oblique"): (1, 0, 0, 1, 1, 0),
    (2, "rectangular"): (0, 0, 0, 1, 1, 0),
    (2, "square"): (0, 0, 0, 0, 1, 0),
    (2, "hexagonal"): (0, 0, 0, 0, 1, 0),
}


def family_mask(dim: int, family: str) -> tuple[np.ndarray, np.ndarray]:
    """(free mask, fixed values) of k for a crystal family."""
    try:
        free = np.array(FREE[(dim, family)], dtype=np.float32)
    except KeyError:
        raise ValueError(f"no lattice family {family!r} for dim={dim}") from None
    fixed = np.zeros(6, dtype=np.float32)
    if family in ("hexagonal", "trigonal"):
        fixed[0] = HEX_K1
    return free, fixed


def gram_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    lengths = np.array([a, b, c], dtype=float)
    cosines = np.cos(np.radians([alpha, beta, gamma]))
    g = np.outer(lengths, lengths)
    g[1, 2] = g[2, 1] = b * c * cosines[0]
    g[0, 2] = g[2, 0] = a * c * cosines[1]
    g[0, 1] = g[1, 0] = a * b * cosines[2]
    return g


def k_from_gram(gram: np.ndarray, dim: int) -> np.ndarray:
    """Coefficients k of log(G)/2 in the dim's basis (least squares is exact: the basis spans symmetric matrices)."""
    w, v = np.linalg.eigh(gram)
    if w.min() <= 0:
        raise ValueError(f"lattice metric is not positive definite (eigenvalues {w})")
    s = (v * (0.5 * np.log(w))) @ v.T
    basis = BASIS[dim].reshape(6, 9).T
    k, *_ = np.linalg.lstsq(basis, s.reshape(9), rcond=None)
    return k.astype(np.float32)


def project_k(k: torch.Tensor, free: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Back onto the family: fixed components restored exactly."""
    return k * free + fixed * (1 - free)


def gram_from_k(k: torch.Tensor, dim: torch.Tensor) -> torch.Tensor:
    """G = exp(2 S) for a batch: k (B, 6), dim (B,) in {2, 3}."""
    b = _basis(k.dtype, k.device)[(dim == 3).long()]  # (B, 6, 3, 3)
    s = torch.einsum("bi,bijk->bjk", k, b)
    return expm(2 * s)


_BASIS_CACHE: dict[tuple, torch.Tensor] = {}


def _basis(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The basis on a device, made once: a host-to-device copy inside a CUDA graph capture is illegal."""
    key = (dtype, str(device))
    if key not in _BASIS_CACHE:
        _BASIS_CACHE[key] = torch.as_tensor(np.stack([BASIS[2], BASIS[3]]), dtype=dtype, device=device)
    return _BASIS_CACHE[key]


def expm(a: torch.Tensor, squarings: int = 10, order: int = 10) -> torch.Tensor:
    """exp of a stack of 3x3 matrices by scaling and squaring a Taylor series.

    Fixed work and no host synchronisation (torch.linalg.matrix_exp reads norms back to the host),
    so a sampler step can be captured as a CUDA graph. For ||a|| <= 100 (cells far beyond any
    crystal's) the truncation error is below float64 rounding.
    """
    x = a / 2**squarings
    eye = torch.eye(3, dtype=a.dtype, device=a.device).expand_as(a)
    result = eye
    for j in range(order, 0, -1):  # Horner: I + x (I + x/2 (I + x/3 (...)))
        result = eye + (x @ result) / j
    for _ in range(squarings):
        result = result @ result
    return result


def lattice_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """One lattice (rows = vectors) with this metric: the Cholesky factor, a lower-triangular cell.

    Closed form for 3x3 (torch.linalg.cholesky checks its result on the host: a sync per call).
    """
    g = gram
    l00 = torch.sqrt(g[..., 0, 0])
    l10, l20 = g[..., 1, 0] / l00, g[..., 2, 0] / l00
    l11 = torch.sqrt(g[..., 1, 1] - l10**2)
    l21 = (g[..., 2, 1] - l20 * l10) / l11
    l22 = torch.sqrt(g[..., 2, 2] - l20**2 - l21**2)
    zero = torch.zeros_like(l00)
    rows = [torch.stack(r, dim=-1) for r in ((l00, zero, zero), (l10, l11, zero), (l20, l21, l22))]
    return torch.stack(rows, dim=-2)


def parameters_from_gram(gram: np.ndarray) -> tuple[float, float, float, float, float, float]:
    lengths = np.sqrt(np.diag(gram))
    cos = lambda i, j: np.clip(gram[i, j] / (lengths[i] * lengths[j]), -1.0, 1.0)  # noqa: E731
    angles = np.degrees(np.arccos([cos(1, 2), cos(0, 2), cos(0, 1)]))
    return (*map(float, lengths), *map(float, angles))
