"""Routing alignment: does MERGE's router stay balanced and follow the RUS, against routers that never read RUS?

Each variant is trained with AdamW (lr 1e-3, batch 32, gradient clip 1) on a dataset's training split, with
train.py's default small model, and measured on the validation split after each number of steps in
`--checkpoints` with `modeling_merge.training.evaluate_model`: accuracy, macro-F1 and the routing-alignment
metrics (least / most used expert's share of the top-k slots over all MoE layers; routing JSD of redundant vs
other and of unique vs other modality pairs at the same step; share of slots on the synergy experts of tokens
in synergistic cells vs elsewhere). The softmax and FuseMoE routers hold the same RUS (never read by them), so
their alignment metrics are the control (the paper's Fig. 8 claims they show no RUS structure).

    python benchmarks/routing.py                                   # synthetic known-RUS job, ~6 min on 2 cores
    python benchmarks/routing.py --dataset wesad_e4 --data_dir ../shared/data/wesad_e4 --checkpoints 30,300
    python benchmarks/routing.py --from_runs runs/benchmarks/v2   # the same metrics, test split, of quality.py's runs

The RUS sidecar is estimated once into `--work_dir` (or read from there) as train.py does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _timing import environment, format_table, write_json

from modeling_merge.configuration_merge import PAPER_ROUTING

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "examples"))

VARIANTS = {  # name → (router_type, MergeConfig overrides)
    "MERGE": ("rus", {}),
    "MERGE paper routing": ("rus", PAPER_ROUTING),
    "MERGE without selection bias": ("rus", {"router_bias_update_rate": 0.0}),
    "MERGE selection bias from zero": ("rus", {"router_bias_start": "zero"}),
    "MERGE sign-rule bias (before)": ("rus", {"router_bias_update_rule": "sign", "router_bias_update_rate": 0.02}),
    "MERGE without synergy target": ("rus", {"synergy_target_mass": None}),
    "MERGE unbounded uniqueness (before)": ("rus", {"uniqueness_target_jsd": None}),
    "MERGE bias rate 0.1 (before)": ("rus", {"router_bias_update_rate": 0.1}),
    "MERGE bias without offset tracking": ("rus", {"router_bias_tracks_logit_offsets": False}),
    "MERGE proportional untracked bias (before)": ("rus", {"router_bias_update_rule": "proportional",
                                                          "router_bias_tracks_logit_offsets": False}),
    "MERGE redundant cells not unique": ("rus", {"uniqueness_excludes_redundant": True}),
    "softmax top-k (control)": ("softmax", {}),
    "FuseMoE laplace_per_modality (control)": ("laplace_per_modality", {}),
}
COLUMNS = [("variant", "variant", "s"), ("step", "step", "d"), ("macro_f1", "val macro-F1", ".3f"),
           ("routing_expert_share_min", "least expert", ".3f"), ("routing_expert_share_max", "most expert", ".3f"),
           ("routing_synergy_share_synergistic", "syn share: syn cells", ".3f"),
           ("routing_synergy_share_other", "syn share: other", ".3f"),
           ("routing_redundant_pair_jsd", "JSD redundant", ".3f"),
           ("routing_redundant_not_unique_pair_jsd", "JSD red. not unique", ".3f"),
           ("routing_non_redundant_pair_jsd", "JSD other", ".3f"),
           ("routing_unique_pair_jsd", "JSD unique", ".3f"), ("routing_non_unique_pair_jsd", "JSD non-unique", ".3f")]


def run_variant(name: str, router_type: str, overrides: dict, data, checkpoints: list[int], seed: int) -> list[dict]:
    """Train one variant, evaluating on validation at every checkpoint; one row per checkpoint."""
    import torch
    import train

    from modeling_merge.training import MultimodalCollator, evaluate_model

    args, splits, metadata, sidecar = data
    torch.manual_seed(seed)
    options = json.loads(args.model_options) | overrides
    variant_args = train.TrainArguments(**{**vars(args), "router_type": router_type, "model_options": json.dumps(options)})
    model = train.build_model(variant_args, metadata, sidecar)
    sidecar.apply_to(model)  # the controls hold the RUS too, for the alignment metrics
    collator = MultimodalCollator(metadata.modality_names)
    train_loader = train.make_loader(splits["train"], collator, 32, shuffle=True, seed=seed)
    validation_loader = train.make_loader(splits["validation"], collator, 64, shuffle=False, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    batches, step, rows, started = iter(train_loader), 0, [], time.perf_counter()
    for target in checkpoints:
        model.train()
        while step < target:
            batch = next(batches, None)
            if batch is None:
                batches = iter(train_loader)
                batch = next(batches)
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
        metrics, _, _ = evaluate_model(model, validation_loader)
        rows.append({"variant": name, "router_type": router_type, "overrides": overrides, "step": step,
                     "train_seconds": time.perf_counter() - started, **metrics})
        print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    return rows


def tabulate_runs(root: Path) -> list[dict]:
    """Mean routing metrics (test split) per dataset and router over the seeds of `quality.py`'s run folders
    (`<root>/<dataset>/<variant>/seed<k>/results.json`)."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(root.glob("*/*/seed*/results.json")):
        groups.setdefault((path.parts[-4], path.parts[-3]), []).append(json.loads(path.read_text())["test"])
    rows = []
    for (dataset, variant), tests in groups.items():
        row = {"variant": f"{dataset} {variant}", "step": len(tests)}
        for key, _, _ in COLUMNS[2:]:
            values = [test[key] for test in tests if key in test]
            if values:  # the least / most used expert's share: its extreme over the seeds; the rest: means
                summary = {"routing_expert_share_min": min, "routing_expert_share_max": max}.get(key, np.mean)
                row[key] = float(summary(values))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--dataset_options", default="{}", help="JSON of builder options")
    parser.add_argument("--checkpoints", default="3,30,300", help="comma-separated step counts to evaluate at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--work_dir", type=Path, default=REPO_ROOT / "runs" / "benchmarks" / "routing")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "routing.json")
    parser.add_argument("--from_runs", type=Path, default=None,
                        help="only tabulate the routing metrics of quality.py's runs under this folder")
    options = parser.parse_args(argv)
    if options.from_runs is not None:
        rows = tabulate_runs(options.from_runs)
        print("test-split routing metrics per dataset and router (least / most expert: extremes over the seeds; "
              "the rest: means)")
        print(format_table(rows, [("variant", "dataset / router", "s"), ("step", "seeds", "d"),
                                  ("macro_f1", "test macro-F1", ".3f"), *COLUMNS[3:]]))
        return {"rows": rows}
    import torch
    import train
    from accelerate import Accelerator

    torch.set_num_threads(options.threads)
    unknown = sorted(set(options.variants.split(",")) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    work_dir = options.work_dir / options.dataset
    args = train.TrainArguments(dataset=options.dataset, data_dir=options.data_dir, dataset_options=options.dataset_options,
                                output_dir=str(work_dir), report_to="none", seed=options.seed, cpu=True)
    accelerator = Accelerator(cpu=True)
    splits, metadata = train.load_data(args, accelerator)
    sidecar = train.load_or_estimate_rus(args, splits, metadata, accelerator)
    checkpoints = sorted(int(step) for step in options.checkpoints.split(","))
    print(format_table([], COLUMNS), flush=True)
    rows = [row for name in options.variants.split(",")
            for row in run_variant(name, *VARIANTS[name], (args, splits, metadata, sidecar), checkpoints, options.seed)]
    payload = {"environment": environment("cpu", "fp32"), "dataset": options.dataset,
               "dataset_options": json.loads(options.dataset_options), "checkpoints": checkpoints,
               "seed": options.seed, "command": " ".join(sys.argv), "rows": rows}
    print(f"\nrouting alignment on the validation split of {options.dataset} (seed {options.seed})")
    print(format_table(rows, COLUMNS))
    write_json(options.output, payload)
    return payload


if __name__ == "__main__":
    main()
