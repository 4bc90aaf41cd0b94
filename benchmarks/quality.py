"""Quality on real data and on the synthetic known-RUS benchmark: MERGE (router_type rus) against the baselines
behind the router switch — a dense Transformer (``dense``), a softmax top-k MoE (``softmax``) and FuseMoE-style
per-modality Laplace gates (``laplace_per_modality``) — with one training budget per dataset for every router.

    python benchmarks/quality.py                       # 3 datasets × 4 routers × 5 seeds → results/quality.json
    python benchmarks/quality.py --datasets synthetic --seeds 2
    python benchmarks/quality.py --smoke               # tiny budget: checks the script runs end to end
    python benchmarks/quality.py --report_only         # tabulate the finished runs only

Resumable: finished runs (results.json) are skipped. Budgets and run folders: benchmarks/_harness.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Run, Variant, run_script

ROUTERS = [Variant("MERGE (rus)", {"router_type": "rus"}), Variant("dense", {"router_type": "dense"}),
           Variant("softmax top-k", {"router_type": "softmax"}),
           Variant("laplace per modality", {"router_type": "laplace_per_modality"})]


def build_runs(datasets: list[str], seeds: int, smoke: bool) -> list[Run]:
    return [Run(dataset, variant, seed, smoke) for dataset in datasets for seed in range(seeds) for variant in ROUTERS]


if __name__ == "__main__":
    run_script("quality", __doc__.splitlines()[0], build_runs, ["synthetic", "wesad_e4", "physionet2012"], 5)
