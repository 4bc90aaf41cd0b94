"""Ablations of MERGE: each auxiliary loss removed (paper Fig. 7), the estimated RUS replaced by zeros, noise or a
shuffle of its own values (paper Fig. 14), and the number of RUS lags; same budget as benchmarks/quality.py.

    python benchmarks/ablations.py                     # synthetic, 3 seeds → results/ablations.json
    python benchmarks/ablations.py --datasets synthetic wesad_e4 --seeds 3
    python benchmarks/ablations.py --smoke             # tiny budget: checks the script runs end to end

The full-MERGE rows share their runs with quality.py (same folder). Resumable: finished runs are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Run, Variant, run_script

MERGE = {"router_type": "rus"}
VARIANTS = [
    Variant("MERGE (full, 4 lags)", MERGE),
    *[Variant(f"no {loss} loss", {**MERGE, "disable_aux_loss": [loss]})
      for loss in ("redundancy", "uniqueness", "synergy", "load_balance")],
    *[Variant(f"RUS → {ablation}", {**MERGE, "rus_ablation": ablation}) for ablation in ("zeros", "noise", "shuffled")],
    *[Variant(f"{lags} lag{'s' * (lags > 1)}", {**MERGE, "num_rus_lags": lags}) for lags in (1, 2)],
]


def build_runs(datasets: list[str], seeds: int, smoke: bool) -> list[Run]:
    return [Run(dataset, variant, seed, smoke) for dataset in datasets for seed in range(seeds) for variant in VARIANTS]


if __name__ == "__main__":
    run_script("ablations", __doc__.splitlines()[0], build_runs, ["synthetic"], 3, structure_reference=VARIANTS[0].name)
