"""The denoiser: a CSPNet-style periodic E(3)-invariant network on a fully connected graph.

Inputs are invariant by construction: fractional coordinate differences (Fourier features on
periodic axes; a layer's z difference in Å through sinusoids of fixed wavelengths), Cartesian
pair distances (radial basis), the lattice through its log-metric k, and embeddings of time,
element, group and the Wyckoff site symmetry. Rotating the Cartesian frame changes none of
them; translating all atoms changes no difference; permuting atoms permutes the outputs.

Outputs: per atom three coefficients on the unit lattice vectors (a Cartesian vector once
multiplied by them, so it rotates with the frame), and six k-space coefficients for the lattice.
"""

from __future__ import annotations

import ctypes
import math
import platform
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .crystal import N_GROUP_EMBEDDINGS, CrystalBatch


@dataclass
class DenoiserConfig:
    hidden: int = 256
    layers: int = 4
    num_freqs: int = 8  # Fourier features per periodic axis (and wavelengths for a layer's z)
    num_rbf: int = 16  # radial basis functions of the pair distance
    cutoff: float = 8.0  # Å, range of the radial basis centres
    max_z: int = 100
    site_vocab_size: int = 1  # set from the training data's site-symmetry vocabulary


# On the CPU the edge MLP runs over rows of atoms, about this many pairs at a time: its temporaries (pairs x hidden
# floats, 8 MB at hidden 256) stay below glibc's mmap threshold and are reused from the heap. All pairs at once made
# each temporary a fresh mapping (150 MB on the default's batches), page-faulted anew on every call: half of the
# refiner's CPU time was system time (docs/benchmarks.md, "The refiner's CPU speed"). GPUs take all pairs at once.
CPU_EDGE_PAIRS = 8192


def keep_freed_memory() -> None:
    """Let glibc keep freed chunks up to 32 MB in the heap (and trim it above 64 MB) instead of returning them to
    the OS, so the network's per-step temporaries are not mapped and faulted in again each step (no-op off glibc)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


class EdgeBlock(nn.Module):
    """Message passing over all pairs; the first edge layer is split per endpoint so it runs per node."""

    def __init__(self, hidden: int, edge_features: int):
        super().__init__()
        self.src = nn.Linear(hidden, hidden)
        self.dst = nn.Linear(hidden, hidden, bias=False)
        self.feat = nn.Linear(edge_features, hidden, bias=False)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, edge: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        src, dst = self.src(h), self.dst(h)
        weight = mask[:, None, :, None]
        if h.device.type != "cpu":  # all pairs at once (no Python loop: torch.compile keeps one graph for all shapes)
            agg = self.summed_messages(src, dst, edge, weight)
        else:
            batch, atoms, _ = h.shape
            rows = max(1, CPU_EDGE_PAIRS // max(1, batch * atoms))
            agg = torch.cat([self.summed_messages(src[:, i : i + rows], dst, edge[:, i : i + rows], weight)
                             for i in range(0, atoms, rows)], 1)
        return self.norm(h + self.node(torch.cat([h, agg / count[:, None, None]], dim=-1)))

    def summed_messages(self, src: torch.Tensor, dst: torch.Tensor, edge: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Sum over every atom j (masked: real atoms only) of the messages to the atoms i of `src` and `edge` rows."""
        m = self.feat(edge) + src[:, :, None, :] + dst[:, None, :, :]
        return (F.silu(self.edge_out(F.silu(m))) * weight).sum(2)


class Denoiser(nn.Module):
    def __init__(self, config: DenoiserConfig):
        super().__init__()
        keep_freed_memory()
        self.config = config
        h = config.hidden
        self.element = nn.Embedding(config.max_z + 1, h)
        self.group = nn.Embedding(N_GROUP_EMBEDDINGS, h)
        self.site = nn.Embedding(config.site_vocab_size, h)
        self.time = nn.Sequential(nn.Linear(32, h), nn.SiLU(), nn.Linear(h, h))
        self.lattice_in = nn.Sequential(nn.Linear(6, h), nn.SiLU(), nn.Linear(h, h))
        edge_features = 3 * 2 * config.num_freqs + config.num_rbf
        self.blocks = nn.ModuleList(EdgeBlock(h, edge_features) for _ in range(config.layers))
        self.coord_out = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 3))
        self.lattice_out = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 6))
        freqs = torch.arange(1, config.num_freqs + 1, dtype=torch.float32)
        self.register_buffer("periodic_freqs", 2 * math.pi * freqs, persistent=False)
        wavelengths = torch.logspace(math.log10(0.5), math.log10(20.0), config.num_freqs)
        self.register_buffer("z_freqs", 2 * math.pi / wavelengths, persistent=False)
        self.register_buffer("rbf_centres", torch.linspace(0.0, config.cutoff, config.num_rbf), persistent=False)

    def edge_features(self, batch: CrystalBatch, frac: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
        delta = frac[:, None, :, :] - frac[:, :, None, :]  # (B, N, N, 3): j - i
        periodic = batch.periodic[:, None, None, :, None]
        angle = torch.where(periodic > 0, delta[..., None] * self.periodic_freqs, delta[..., None] * self.z_freqs)
        fourier = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).flatten(-2)
        reduced = delta - torch.round(delta) * batch.periodic[:, None, None, :]
        dist = torch.linalg.norm(torch.einsum("bijk,bkl->bijl", reduced, lattice), dim=-1)
        width = self.config.cutoff / self.config.num_rbf
        rbf = torch.exp(-(((dist[..., None] - self.rbf_centres) / width) ** 2))
        return torch.cat([fourier, rbf], dim=-1)

    def forward(self, batch: CrystalBatch, frac: torch.Tensor, k: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor):
        """(per-atom coefficients (B, N, 3), lattice k-space output (B, 6))."""
        mask = batch.atom_mask.to(frac.dtype)
        count = mask.sum(1).clamp(min=1.0)
        site_sym = torch.gather(batch.site_symmetry, 1, batch.atom_site)
        h = self.element(batch.atom_z) + self.site(site_sym)
        h = h + (self.group(batch.group) + self.time(_time_features(t)) + self.lattice_in(k))[:, None, :]
        edge = self.edge_features(batch, frac, lattice)
        for block in self.blocks:
            h = block(h, edge, mask, count)
        pooled = (h * mask[..., None]).sum(1) / count[:, None]
        return self.coord_out(h) * mask[..., None], self.lattice_out(pooled)


def _time_features(t: torch.Tensor) -> torch.Tensor:
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), 16, device=t.device))
    angle = t[:, None].float() * freqs
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
