"""Shared machinery of benchmarks/quality.py and benchmarks/ablations.py: per-dataset budgets, one
`examples/train.py` run per (dataset, variant, seed) in its own folder, a worker pool, aggregation and tables.

Every run goes to ``runs/benchmarks/<dataset>/<variant>/seed<k>`` (gitignored) and is skipped when its
``results.json`` exists, so a killed campaign resumes where it stopped (an interrupted run continues from its
last epoch checkpoint). Runs that train the same model (MERGE with the default settings) share their folder
between the two scripts. Each dataset's RUS sidecar is estimated once, on its training split, by the first run
that needs it, and reused by every seed and variant (``--rus_sidecar``); the built dataset is cached once per
dataset (``--dataset_cache_dir``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_ROOT = REPO_ROOT / "runs" / "benchmarks"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("MERGE_SHARED_DATA", "/work/shared/data"))

# One budget per dataset, identical for every router / variant on it (README "## Quality" states them).
# The model is train.py's default small MERGE (d_model 32, 2 blocks, both MoE) everywhere.
DATASETS = {
    "synthetic": {"train": {"dataset_options": '{"seq_len": 12}', "num_epochs": 8}, "metrics": ("accuracy", "macro_f1", "roc_auc")},
    # WESAD-E4 at 1e-3 / 8 epochs sat at the majority class for every router (train loss = the label entropy);
    # 3e-3 / 10 epochs starts to learn (dense: val macro-F1 0.20, AUROC 0.64).
    "wesad_e4": {"train": {"data_dir": str(SHARED_DATA / "wesad_e4"), "dataset_options": '{"window": 30, "stride": 60}',
                           "num_epochs": 10, "learning_rate": 3e-3, "selection_metric": "macro_f1"},
                 "metrics": ("accuracy", "macro_f1", "roc_auc")},
    "physionet2012": {"train": {"data_dir": str(SHARED_DATA / "physionet2012"), "dataset_options": '{"bin_minutes": 120}',
                                "num_epochs": 6, "selection_metric": "roc_auc"},
                      "metrics": ("roc_auc", "macro_f1", "accuracy")},
}
# A tiny budget that only checks the scripts run end to end (``--smoke``); its runs go to a separate tree.
SMOKE = {"num_epochs": 1, "limit_examples": 64, "rus_estimator": "quantized_exact",
         "model_options": json.dumps({"d_model": 16, "num_blocks": 1, "num_moe_blocks": 1, "num_encoder_layers": 1,
                                      "ffn_dim": 32, "expert_hidden_dim": 32, "num_attention_heads": 2})}


@dataclass(frozen=True)
class Variant:
    """A named change of `TrainArguments` fields (router, disabled losses, RUS ablation, lags)."""

    name: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def folder(self) -> str:
        """Folder name from the overrides, so that identical training settings share runs across scripts."""
        parts = []
        for key, value in sorted(self.overrides.items()):
            value = "-".join(value) if isinstance(value, (list, tuple)) else value
            parts.append(f"{key}={value}")
        return "__".join(parts) or "default"


@dataclass(frozen=True)
class Run:
    dataset: str
    variant: Variant
    seed: int
    smoke: bool = False

    @property
    def output_dir(self) -> Path:
        root = RUNS_ROOT / ("smoke" if self.smoke else "") / self.dataset
        return root / self.variant.folder / f"seed{self.seed}"

    @property
    def num_rus_lags(self) -> int:
        return int(self.variant.overrides.get("num_rus_lags", 4))

    @property
    def group(self) -> tuple:
        """Runs of one group share the dataset cache and the sidecar; the first of each group runs alone."""
        return self.dataset, self.num_rus_lags, self.smoke

    def arguments(self) -> dict:
        shared = RUNS_ROOT / ("smoke" if self.smoke else "")
        settings = {**DATASETS[self.dataset]["train"], **(SMOKE if self.smoke else {}), **self.variant.overrides}
        return {"dataset": self.dataset, "output_dir": str(self.output_dir), "seed": self.seed,
                "dataset_cache_dir": str(shared / "cache" / self.dataset),
                "rus_sidecar": str(shared / "rus" / f"{self.dataset}_L{self.num_rus_lags}.safetensors"),
                "report_to": "none", "cpu": True, "resume": True, **settings}


def machine_facts(workers: int) -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads_per_run": 1, "parallel_runs": workers,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}


def _execute(run: Run) -> dict:
    """Worker: one training run, its console output in ``<output_dir>/train.log``; returns its results.json."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    import train

    run.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(run.output_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        train.train(train.TrainArguments(**run.arguments()))
    results = json.loads((run.output_dir / "results.json").read_text())
    results["wall_s"] = time.perf_counter() - started
    (run.output_dir / "wall_s.json").write_text(json.dumps({"wall_s": results["wall_s"]}))
    return results


def load_result(run: Run) -> dict | None:
    path = run.output_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    wall = run.output_dir / "wall_s.json"
    results["wall_s"] = json.loads(wall.read_text())["wall_s"] if wall.exists() else None
    log = run.output_dir / "metrics.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    results["validation_curve"] = [entry[results["selection_metric"]] for entry in entries
                                   if entry["split"] == "validation"]
    return results


def execute(runs: Sequence[Run], workers: int) -> None:
    """Train every run without results, ``workers`` at a time (one torch thread each). The first run of each
    (dataset, lags) group goes first, so the dataset cache and the RUS sidecar are written once, not raced."""
    pending = [run for run in runs if load_result(run) is None]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs already done; {len(pending)} to train, {workers} at a time")
    if not pending:
        return
    first_of_group = {}
    for run in pending:
        first_of_group.setdefault(run.group, run)
    phases = [list(first_of_group.values()), [run for run in pending if run not in first_of_group.values()]]
    failures = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool, \
            tqdm(total=len(pending), desc="runs", unit="run") as progress:
        for phase in phases:
            futures = {pool.submit(_execute, run): run for run in phase}
            for future in as_completed(futures):
                run = futures[future]
                try:
                    results = future.result()
                    progress.set_postfix_str(f"{run.dataset}/{run.variant.name}/seed{run.seed} "
                                             f"{results['selection_metric']} {results['validation'][results['selection_metric']]:.3f} "
                                             f"({results['wall_s']:.0f} s)")
                except Exception as error:  # noqa: BLE001 — reported below; the other runs go on
                    failures.append(f"{run.output_dir}: {type(error).__name__}: {error}")
                    progress.write(f"FAILED {failures[-1]} (log: {run.output_dir / 'train.log'})")
                progress.update()
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))


def mean_std(values: Sequence[float]) -> dict:
    values = [float(value) for value in values]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return {"mean": float(np.mean(values)) if values else math.nan, "std": std, "n": len(values), "values": values}


def summarize(runs: Sequence[Run]) -> tuple[dict, list[dict]]:
    """(summary[dataset][variant] = {metric: mean/std/n/values, ...}, per-run records) over finished runs."""
    summary, records = {}, []
    for run in runs:
        results = load_result(run)
        if results is None:
            continue
        records.append({"dataset": run.dataset, "variant": run.variant.name, "seed": run.seed,
                        "output_dir": str(run.output_dir.relative_to(REPO_ROOT)), "test": results["test"],
                        "validation": results["validation"], "best_epoch": results["best_epoch"],
                        "steps": results["steps"], "wall_s": results["wall_s"],
                        "validation_curve": results["validation_curve"]})
    for dataset in dict.fromkeys(run.dataset for run in runs):
        metrics = DATASETS[dataset]["metrics"]
        for variant in dict.fromkeys(run.variant.name for run in runs if run.dataset == dataset):
            chosen = [r for r in records if r["dataset"] == dataset and r["variant"] == variant]
            if not chosen:
                continue
            entry = {f"test_{metric}": mean_std([r["test"][metric] for r in chosen if metric in r["test"]])
                     for metric in metrics}
            entry["validation_selection_metric"] = mean_std([max(r["validation_curve"]) for r in chosen])
            entry["seeds"] = sorted(r["seed"] for r in chosen)
            entry["wall_s_per_run"] = mean_std([r["wall_s"] for r in chosen if r["wall_s"] is not None])["mean"]
            summary.setdefault(dataset, {})[variant] = entry
    return summary, records


def budget_of(dataset: str, smoke: bool) -> dict:
    import train  # on sys.path: run_script puts examples/ there

    defaults = train.TrainArguments()
    settings = {**DATASETS[dataset]["train"], **(SMOKE if smoke else {})}
    settings.pop("data_dir", None)
    return {"num_epochs": settings.get("num_epochs", defaults.num_epochs), "batch_size": defaults.batch_size,
            "learning_rate": settings.get("learning_rate", defaults.learning_rate), "limit_examples": settings.get("limit_examples", 0),
            "selection_metric": settings.get("selection_metric", defaults.selection_metric),
            "dataset_options": settings.get("dataset_options", defaults.dataset_options),
            "model_options": json.loads(settings.get("model_options", defaults.model_options))}


def format_table(summary: dict, title: str) -> str:
    lines = [title]
    for dataset, variants in summary.items():
        metrics = [key for key in next(iter(variants.values())) if key.startswith("test_")]
        header = ["variant", "seeds", *[key.removeprefix("test_") for key in metrics], "best val", "s/run"]
        rows = [header]
        for variant, entry in variants.items():
            cells = [f"{entry[key]['mean']:.3f} ± {entry[key]['std']:.3f}" for key in metrics]
            rows.append([variant, str(len(entry["seeds"])), *cells,
                         f"{entry['validation_selection_metric']['mean']:.3f}", f"{entry['wall_s_per_run'] or 0:.0f}"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.append(f"\n{dataset}")
        lines.append("| " + " | ".join(cell.ljust(width) for cell, width in zip(header, widths)) + " |")
        lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
        lines.extend("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows[1:])
    return "\n".join(lines)


def run_script(name: str, description: str, build_runs: Callable[[list[str], int, bool], list[Run]],
               default_datasets: list[str], default_seeds: int, argv: list[str] | None = None) -> dict:
    """The command line both scripts share: choose datasets / seeds / workers, train what is missing,
    print the mean ± std table, write ``benchmarks/results/<name>.json``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--datasets", nargs="+", default=default_datasets, choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, default=default_seeds, help="seeds 0..N-1 per variant")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--smoke", action="store_true", help="tiny budget (1 epoch, 64 examples): checks the script only")
    parser.add_argument("--variants", nargs="+", default=None, help="only these variants (names as in the table)")
    parser.add_argument("--report_only", action="store_true", help="train nothing; tabulate the runs that exist")
    parser.add_argument("--output", default=None, help=f"JSON path (default benchmarks/results/{name}.json; "
                                                       f"with --smoke runs/benchmarks/smoke/{name}.json)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT / "examples"))

    runs = build_runs(args.datasets, args.seeds, args.smoke)
    if args.variants:
        unknown = sorted(set(args.variants) - {run.variant.name for run in runs})
        if unknown:
            parser.error(f"unknown --variants {unknown}; choose from {sorted({run.variant.name for run in runs})}")
        runs = [run for run in runs if run.variant.name in args.variants]
    started = time.perf_counter()
    facts = machine_facts(args.workers)
    if not args.report_only:
        execute(runs, args.workers)
    summary, records = summarize(runs)
    budgets = {dataset: budget_of(dataset, args.smoke) for dataset in args.datasets}
    report = {"benchmark": name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": "python " + " ".join([f"benchmarks/{name}.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": facts, "campaign_wall_s": time.perf_counter() - started, "smoke": args.smoke,
              "seeds_requested": args.seeds, "runs_expected": len(runs), "runs_finished": len(records),
              "std": "sample standard deviation over seeds (ddof=1)", "budgets": budgets,
              "summary": summary, "runs": records}
    output = Path(args.output or (RUNS_ROOT / "smoke" if args.smoke else RESULTS_DIR) / f"{name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(summary, f"\n{name}: test metrics, mean ± std over seeds ({len(records)}/{len(runs)} runs)"))
    for dataset, budget in budgets.items():
        print(f"budget {dataset}: {json.dumps(budget)}")
    print(f"wrote {output}")
    return report
