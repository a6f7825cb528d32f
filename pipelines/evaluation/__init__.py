"""Evaluation: the metrics of `xtallm evaluate` and the MLFF stability machinery behind them.

- `evaluate.py`: `evaluate()` and its options; `suite.py`: one function per metric + the registry;
- `context.py`: samples, crystals and references every metric reads (shared pieces computed once);
- `metrics.py`: the protocol's primitives (validity, matching, JSD, Wasserstein, layer geometry);
- `coverage.py`: CDVAE's COV-R/COV-P fingerprints; `report.py`: metrics.json, summary.md, plots;
- `stability.py`: MLFF energies, correction schemes, the hull; `relax.py`: parallel relaxations
  (`xtallm relax`); `hull.py`: the reference hull (`xtallm hull build`).
"""

from .evaluate import METRIC_KEYS, EvaluateOptions, evaluate
from .report import write_report

__all__ = ["METRIC_KEYS", "EvaluateOptions", "evaluate", "write_report"]
