"""Shared machinery of benchmarks/quality.py and benchmarks/ablations.py: per-dataset protocols and budgets, one
`examples/train.py` run per (dataset, variant, seed) in its own folder, a worker pool, aggregation and tables.

A *dataset* here is a benchmark key (``wesad_e4_three_class``), i.e. a builder (``wesad_e4``) with fixed builder
options; ``DATASETS`` holds them. Every run goes to ``RUNS_ROOT/<dataset>/<variant>/seed<k>`` (gitignored)
and is skipped when its ``results.json`` exists, so a killed campaign resumes where it stopped (an interrupted run
continues from its last epoch checkpoint). Runs that train the same model (MERGE with the default settings) share
their folder between the two scripts. Before any training, each (dataset, lags) group is prepared once, alone:
the dataset is built into a cache shared by its runs (``--dataset_cache_dir``) and its RUS sidecar is estimated on
the training split and reused by every seed and variant (``--rus_sidecar``); the time this takes is recorded
apart from the runs' wall times. A cross-validated dataset (``subject_folds``) trains seed k on subject fold k, with
its own cache and sidecar per fold. Runs are launched in the order the script lists them (its priority order),
``--workers`` at a time, and ``--deadline_minutes`` stops launching new ones.
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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
# v5: v4 (v3's training recipe — weight decay on matrices only, balanced class weights, early stopping on the selection
# metric — with the proportional selection-bias update) plus MERGE's uniqueness target (uniqueness_target_jsd 0.5)
# and the selection-bias rate 0.05; v4 folders hold MERGE with the paper's unbounded uniqueness loss and rate 0.1,
# v3 folders the sign-rule MERGE. The RUS losses act on router_type "rus" only, so the dense / softmax / FuseMoE runs
# and the anchors of v4 stand for v5 unchanged. v6 folders hold MERGE with uniqueness_excludes_redundant=True (tried as
# a default at commit 2920096, not kept; benchmarks/README "Routing"). v7: v5 plus the selection bias that tracks each
# expert's logit offset and the log-ratio step (MERGE rerun; the controls of v4 / v5 stand, see benchmarks/README).
# v8: v7 plus synergy_target_mass 0.35 (MERGE rerun), and the softmax and Laplace controls rerun under v8's bias;
# dense links to v4 (no router).
# v9: v8 plus the decaying selection-bias rate (router_bias_update_rate_final 0.02); MERGE and the softmax and Laplace
# controls rerun (the bias acts on every router); dense links to v4, the anchors to v8; v8's ablations stand.
# v10: v9 plus no dropout on the synergy experts' attention probabilities (synergy_attention_dropout 0.0); MERGE and
# the softmax and Laplace controls rerun (they share the experts); dense links to v4, the anchors to v8.
RUNS_ROOT = REPO_ROOT / "runs" / "benchmarks" / "v10"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SHARED_DATA = Path(os.environ.get("MERGE_SHARED_DATA", "/work/shared/data"))

# One protocol and budget per dataset, identical for every router / variant on it (README "## Quality" states them).
# The model is train.py's default small MERGE (d_model 32, 2 blocks, both MoE) everywhere.
# WESAD-E4: the builder's benchmark protocol (labels counted from each subject's protocol origin, 60-s windows with
# a 30-s stride on the 1 Hz grid, every channel z-scored per subject, a heart-rate channel from the 64 Hz BVP),
# the builder's 10 / 2 / 3 subject split; lr 3e-3 as before the alignment (1e-3 / 8 epochs had left every router at
# the majority class on the misaligned labels).
# The recipe, the same for every network: balanced class weights (every task is imbalanced: PhysioNet 14 % positive,
# WESAD-E4 baseline-heavy), and early stopping on the validation selection metric with a patience of about a third of the
# epoch budget. Budgets from validation evidence: on PhysioNet every v2 network peaked at its last (6th) epoch, so the
# budget is 20 epochs; on WESAD-E4 the v2 networks peaked anywhere in epochs 1-9 of 10, so it is 12.
RECIPE = {"class_weighting": "balanced"}
WESAD_E4 = {"window": 60, "stride": 30, "per_subject_normalize": True, "heart_rate": True}
WESAD_E4_TRAIN = {"data_dir": str(SHARED_DATA / "wesad_e4"), "num_epochs": 12, "early_stopping_patience": 4,
                  "learning_rate": 3e-3, "selection_metric": "macro_f1", **RECIPE}


def wesad_subject_fold(fold: int) -> dict:
    """Builder options of fold ``fold`` (0-4) of WESAD-E4's subject-grouped 5-fold cross-validation: test the 3
    subjects SUBJECTS[3k:3k+3], validate on the next 2 (cyclically), train on the other 10 — the paper's 10 / 2 / 3
    sizes, and over the 5 folds every subject is tested once (the fixed split tests S15-S17 only)."""
    from dataset_builders.wesad import SUBJECTS

    if not 0 <= fold < len(SUBJECTS) // 3:
        raise ValueError(f"WESAD-E4 has {len(SUBJECTS) // 3} subject folds (seeds 0-{len(SUBJECTS) // 3 - 1}), got seed {fold}")
    test = SUBJECTS[3 * fold:3 * fold + 3]
    validation = [SUBJECTS[(3 * fold + 3 + offset) % len(SUBJECTS)] for offset in range(2)]
    return {"test_subjects": test, "validation_subjects": validation,
            "train_subjects": [subject for subject in SUBJECTS if subject not in test + validation]}


def wesad_e4_benchmark(task: str) -> dict:
    """The WESAD-E4 benchmark entry of ``task`` (the builder's protocol options and budget, its metrics)."""
    return {"builder": "wesad_e4", "train": {**WESAD_E4_TRAIN, "dataset_options": json.dumps({**WESAD_E4, "task": task})},
            "metrics": ("accuracy", "macro_f1", "roc_auc", *(("average_precision",) if task == "binary" else ()))}


DATASETS = {
    "synthetic": {"builder": "synthetic", "train": {"dataset_options": '{"seq_len": 12}', "num_epochs": 8,
                                                    "selection_metric": "macro_f1", **RECIPE},
                  "metrics": ("accuracy", "macro_f1", "roc_auc")},
    **{f"wesad_e4_{task}": wesad_e4_benchmark(task) for task in ("three_class", "binary", "paper")},
    # The same tasks over the 5 subject folds: seed k trains, selects and tests on fold k (wesad_subject_fold).
    **{f"wesad_e4_{task}_folds": {**wesad_e4_benchmark(task), "subject_folds": wesad_subject_fold}
       for task in ("three_class", "binary")},
    "physionet2012": {"builder": "physionet2012",
                      "train": {"data_dir": str(SHARED_DATA / "physionet2012"), "dataset_options": '{"bin_minutes": 120}',
                                "num_epochs": 20, "early_stopping_patience": 6, "selection_metric": "roc_auc", **RECIPE},
                      "metrics": ("roc_auc", "average_precision", "macro_f1", "accuracy")},
}
# Older names of a benchmark key (the command lines of earlier READMEs keep working).
DATASET_ALIASES = {"wesad_e4": "wesad_e4_paper"}
# Routing-alignment metrics (modeling_merge.training.evaluate_model) summarised where a run reports them.
ROUTING_METRICS = ("routing_expert_share_min", "routing_expert_share_max", "routing_synergy_share_synergistic",
                   "routing_synergy_share_other", "routing_redundant_pair_jsd", "routing_non_redundant_pair_jsd",
                   "routing_redundant_not_unique_pair_jsd", "routing_unique_pair_jsd", "routing_non_unique_pair_jsd")
# The RUS structure as contrasts of two routing metrics (first minus second; positive = the paper's rule holds):
# redundant pairs route closer (JSD, nats), unique pairs apart, synergistic cells more on the synergy experts (share).
STRUCTURE_CONTRASTS = {
    "redundant pairs closer": ("routing_non_redundant_pair_jsd", "routing_redundant_pair_jsd"),
    "redundant, not unique, closer": ("routing_non_redundant_pair_jsd", "routing_redundant_not_unique_pair_jsd"),
    "unique pairs apart": ("routing_unique_pair_jsd", "routing_non_unique_pair_jsd"),
    "synergistic cells on synergy experts": ("routing_synergy_share_synergistic", "routing_synergy_share_other"),
}
# The variant whose routing structure the others are the controls of (quality.py; ablations.py names its own).
STRUCTURE_REFERENCE = "MERGE (rus)"
# The least-used expert's share of the slots under which routing counts as unbalanced (issue 13's criterion).
BALANCE_FLOOR = 0.02
# A tiny budget that only checks the scripts run end to end (``--smoke``); its runs go to a separate tree.
SMOKE = {"num_epochs": 1, "limit_examples": 64, "rus_estimator": "quantized_exact",
         "model_options": json.dumps({"d_model": 16, "num_blocks": 1, "num_moe_blocks": 1, "num_encoder_layers": 1,
                                      "ffn_dim": 32, "expert_hidden_dim": 32, "num_attention_heads": 2})}


@dataclass(frozen=True)
class Variant:
    """A named change of `TrainArguments` fields (router, disabled losses, RUS ablation, lags) and of `MergeConfig`
    fields (``model_overrides``, merged into the run's ``model_options``, e.g. ``uniqueness_excludes_redundant``)."""

    name: str
    overrides: dict = field(default_factory=dict, hash=False, compare=False)
    model_overrides: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def folder(self) -> str:
        """Folder name from the overrides (model fields prefixed ``model.``), so that identical training settings
        share runs across scripts."""
        settings = {**self.overrides, **{f"model.{key}": value for key, value in self.model_overrides.items()}}
        parts = []
        for key, value in sorted(settings.items()):
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
    def fold(self) -> int | None:
        """The subject fold of a cross-validated dataset (= the seed), else None."""
        return self.seed if "subject_folds" in DATASETS[self.dataset] else None

    @property
    def data_key(self) -> str:
        """Names the data a run trains on: the dataset, and its fold when cross-validated."""
        return self.dataset if self.fold is None else f"{self.dataset}_fold{self.fold}"

    @property
    def group(self) -> tuple:
        """Runs of one group share the dataset cache and the sidecar; the first of each group runs alone."""
        return self.data_key, self.num_rus_lags, self.smoke

    @property
    def cache_dir(self) -> Path:
        return RUNS_ROOT / ("smoke" if self.smoke else "") / "cache" / self.data_key

    def arguments(self) -> dict:
        shared = RUNS_ROOT / ("smoke" if self.smoke else "")
        settings = {**DATASETS[self.dataset]["train"], **(SMOKE if self.smoke else {}), **self.variant.overrides}
        if self.variant.model_overrides:
            import train  # on sys.path: run_script and the workers put examples/ there

            model_options = json.loads(settings.get("model_options", train.TrainArguments.model_options))
            settings["model_options"] = json.dumps({**model_options, **self.variant.model_overrides})
        if self.fold is not None:
            fold_options = DATASETS[self.dataset]["subject_folds"](self.fold)
            settings["dataset_options"] = json.dumps({**json.loads(settings["dataset_options"]), **fold_options})
        return {"dataset": DATASETS[self.dataset]["builder"], "output_dir": str(self.output_dir), "seed": self.seed,
                "dataset_cache_dir": str(self.cache_dir),
                "rus_sidecar": str(shared / "rus" / f"{self.data_key}_L{self.num_rus_lags}.safetensors"),
                "report_to": "none", "cpu": True, "resume": True, **settings}


def machine_facts(workers: int) -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "torch_threads_per_run": 1, "parallel_runs": workers, "nice": os.nice(0),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg())}


def _die_with_parent() -> None:
    """Worker initializer (Linux): the worker gets SIGTERM when the script that launched it dies, so a killed
    campaign leaves no orphan training into a run folder that the next campaign resumes."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _execute(run: Run) -> dict:
    """Worker: one training run, its console output in ``<output_dir>/train.log``; returns its results.json. The run
    holds its folder's ``run.lock`` as ``train.py`` does, so two campaigns never train into one folder."""
    import torch

    from modeling_merge.files import exclusive_lock

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    import train

    run.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with exclusive_lock(run.output_dir / "run.lock", f"benchmark run folder {run.output_dir}"), \
            open(run.output_dir / "train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        train.train(train.TrainArguments(**run.arguments()))
    results = json.loads((run.output_dir / "results.json").read_text())
    results["wall_s"] = time.perf_counter() - started
    (run.output_dir / "wall_s.json").write_text(json.dumps({"wall_s": results["wall_s"]}))
    return results


def _prepare(run: Run) -> dict:
    """Worker: build ``run``'s dataset into its shared cache and estimate its RUS sidecar (unless cached), exactly as
    train.py would at the start of the run; returns the seconds each took (``preparation.json`` beside the sidecar)."""
    import torch
    from accelerate import Accelerator

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    import train

    args = train.TrainArguments(**run.arguments())
    sidecar = Path(args.rus_sidecar)
    record = sidecar.with_name(sidecar.stem + ".preparation.json")
    if sidecar.exists() and record.exists():
        return json.loads(record.read_text())
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(sidecar.with_name(sidecar.stem + ".log"), "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        accelerator = Accelerator(cpu=True)
        splits, metadata = train.load_data(args, accelerator)
        built = time.perf_counter()
        train.load_or_estimate_rus(args, splits, metadata, accelerator)
    facts = {"dataset": run.data_key, "num_rus_lags": run.num_rus_lags, "build_s": built - started,
             "rus_estimate_s": time.perf_counter() - built, "rus_sidecar": str(sidecar.relative_to(REPO_ROOT)),
             "split_sizes": {name: len(split) for name, split in splits.items()}}
    record.write_text(json.dumps(facts, indent=2))
    return facts


def load_result(run: Run) -> dict | None:
    path = run.output_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    wall = run.output_dir / "wall_s.json"
    results["wall_s"] = json.loads(wall.read_text())["wall_s"] if wall.exists() else None
    log = run.output_dir / "metrics.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    validation = [entry for entry in entries if entry["split"] == "validation"]
    results["validation_curve"] = [entry[results["selection_metric"]] for entry in validation]
    results["validation_share_min_curve"] = [entry["routing_expert_share_min"] for entry in validation
                                             if "routing_expert_share_min" in entry]
    return results


def execute(runs: Sequence[Run], workers: int, deadline_s: float | None = None,
            started: float | None = None) -> tuple[dict, list[str]]:
    """Train every run without results, in the given order, ``workers`` at a time (one torch thread each). Each
    (dataset, lags) group is prepared first, one group at a time (dataset cache and RUS sidecar written once, not
    raced). No run is launched once ``deadline_s`` seconds have passed since ``started`` (runs in flight finish).
    Returns the preparation record of every group and the failures (one line each)."""
    started = time.perf_counter() if started is None else started
    pending = [run for run in runs if load_result(run) is None]
    print(f"{len(runs) - len(pending)} of {len(runs)} runs already done; {len(pending)} to train, {workers} at a time")
    first_of_group = {}
    for run in runs:
        first_of_group.setdefault(run.group, run)
    preparation, failures, skipped = {}, [], 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_die_with_parent) as pool:
        for group, run in first_of_group.items():
            facts = pool.submit(_prepare, run).result()
            preparation[f"{run.data_key}_L{run.num_rus_lags}"] = facts
            print(f"prepared {run.data_key} (L={run.num_rus_lags}): build {facts['build_s']:.0f} s, "
                  f"RUS estimate {facts['rus_estimate_s']:.0f} s, splits {facts['split_sizes']}")
        queue, in_flight = list(pending), {}
        with tqdm(total=len(pending), desc="runs", unit="run") as progress:
            while queue or in_flight:
                while queue and len(in_flight) < workers:
                    if deadline_s is not None and time.perf_counter() - started > deadline_s:
                        skipped = len(queue)
                        progress.write(f"deadline of {deadline_s / 60:.0f} min reached: {skipped} run(s) not launched")
                        queue = []
                        break
                    run = queue.pop(0)
                    in_flight[pool.submit(_execute, run)] = run
                if not in_flight:
                    break
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    run = in_flight.pop(future)
                    try:
                        results = future.result()
                        progress.write(f"{run.dataset}/{run.variant.name}/seed{run.seed} "
                                       f"val {results['selection_metric']} {results['validation'][results['selection_metric']]:.3f} "
                                       f"({results['wall_s']:.0f} s)")
                    except Exception as error:  # noqa: BLE001 — reported below; the other runs go on
                        failures.append(f"{run.output_dir}: {type(error).__name__}: {error}")
                        progress.write(f"FAILED {failures[-1]} (log: {run.output_dir / 'train.log'})")
                    progress.update()
    return preparation, failures


def mean_std(values: Sequence[float]) -> dict:
    values = [float(value) for value in values]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return {"mean": float(np.mean(values)) if values else math.nan, "std": std, "n": len(values), "values": values}


def summarize(runs: Sequence[Run], extra_records: Sequence[dict] = ()) -> tuple[dict, list[dict]]:
    """(summary[dataset][variant] = {metric: mean/std/n/values, ...}, per-run records) over finished runs, followed by
    ``extra_records`` (already in the record format, e.g. quality.py's classical anchors, listed after the runs)."""
    summary, records = {}, []
    for run in runs:
        results = load_result(run)
        if results is None:
            continue
        records.append({"dataset": run.dataset, "variant": run.variant.name, "seed": run.seed,
                        "output_dir": str(run.output_dir.relative_to(REPO_ROOT)), "test": results["test"],
                        "validation": results["validation"], "best_epoch": results["best_epoch"],
                        "steps": results["steps"], "wall_s": results["wall_s"],
                        "validation_curve": results["validation_curve"],
                        "validation_share_min_curve": results["validation_share_min_curve"]})
    extra_records = list(extra_records)
    datasets = dict.fromkeys([*(record["dataset"] for record in extra_records), *(run.dataset for run in runs)])
    for dataset in datasets:
        metrics = DATASETS[dataset]["metrics"]
        chosen_records = [r for r in records if r["dataset"] == dataset] + [r for r in extra_records if r["dataset"] == dataset]
        for variant in dict.fromkeys(r["variant"] for r in chosen_records):
            chosen = [r for r in chosen_records if r["variant"] == variant]
            entry = {f"test_{metric}": mean_std([r["test"][metric] for r in chosen if metric in r["test"]])
                     for metric in metrics}
            entry["validation_selection_metric"] = mean_std([max(r["validation_curve"]) for r in chosen])
            entry["seeds"] = sorted(r["seed"] for r in chosen)
            entry["wall_s_per_run"] = mean_std([r["wall_s"] for r in chosen if r["wall_s"] is not None])
            routing = {metric: mean_std([r["test"][metric] for r in chosen if metric in r["test"]
                                         and math.isfinite(r["test"][metric])]) for metric in ROUTING_METRICS}
            entry["test_routing"] = {metric: value for metric, value in routing.items() if value["n"]}
            epoch_shares = [share for r in chosen for share in r.get("validation_share_min_curve", [])]
            if epoch_shares:  # every epoch's checkpoint is one that early stopping could select
                entry["validation_epochs_under_balance_floor"] = {
                    "count": sum(share < BALANCE_FLOOR for share in epoch_shares), "epochs": len(epoch_shares),
                    "first_epoch": sum(r["validation_share_min_curve"][0] < BALANCE_FLOOR for r in chosen
                                       if r.get("validation_share_min_curve"))}
            summary.setdefault(dataset, {})[variant] = entry
    return summary, records + extra_records


def structure_against_controls(records: Sequence[dict], reference_variant: str = STRUCTURE_REFERENCE) -> dict:
    """summary[dataset][control][contrast] = {"reference", "control": mean contrast over the seeds both have,
    "reference_stronger": seeds where ``reference_variant``'s contrast is the larger, "seeds": those seeds}: each
    `STRUCTURE_CONTRASTS` entry on the test split, paired by seed (fold), against every other variant with routing
    metrics."""
    def contrast(record: dict, metrics: tuple[str, str]) -> float:
        first, second = (record["test"].get(metric, math.nan) for metric in metrics)
        return first - second

    summary = {}
    for dataset in dict.fromkeys(record["dataset"] for record in records):
        reference = {r["seed"]: r for r in records if r["dataset"] == dataset and r["variant"] == reference_variant}
        controls = dict.fromkeys(r["variant"] for r in records if r["dataset"] == dataset
                                 and r["variant"] != reference_variant and "routing_expert_share_min" in r["test"])
        for control in controls:
            paired = [(reference[r["seed"]], r) for r in records if r["dataset"] == dataset and r["variant"] == control
                      and r["seed"] in reference]
            for name, metrics in STRUCTURE_CONTRASTS.items():
                pairs = [(contrast(ours, metrics), contrast(theirs, metrics), ours["seed"]) for ours, theirs in paired]
                pairs = [(ours, theirs, seed) for ours, theirs, seed in pairs
                         if math.isfinite(ours) and math.isfinite(theirs)]
                if pairs:
                    summary.setdefault(dataset, {}).setdefault(control, {})[name] = {
                        "reference": float(np.mean([ours for ours, _, _ in pairs])),
                        "control": float(np.mean([theirs for _, theirs, _ in pairs])),
                        "reference_stronger": sum(ours > theirs for ours, theirs, _ in pairs),
                        "seeds": sorted(seed for _, _, seed in pairs)}
    return summary


def budget_of(dataset: str, smoke: bool) -> dict:
    import train  # on sys.path: run_script puts examples/ there

    defaults = train.TrainArguments()
    settings = {**DATASETS[dataset]["train"], **(SMOKE if smoke else {})}
    settings.pop("data_dir", None)
    return {"builder": DATASETS[dataset]["builder"], "num_epochs": settings.get("num_epochs", defaults.num_epochs),
            "batch_size": defaults.batch_size, "learning_rate": settings.get("learning_rate", defaults.learning_rate),
            "limit_examples": settings.get("limit_examples", 0),
            "selection_metric": settings.get("selection_metric", defaults.selection_metric),
            "early_stopping_patience": settings.get("early_stopping_patience", defaults.early_stopping_patience),
            "class_weighting": settings.get("class_weighting", defaults.class_weighting),
            "dataset_options": json.loads(settings.get("dataset_options", defaults.dataset_options)),
            "model_options": json.loads(settings.get("model_options", defaults.model_options))}


def format_table(summary: dict, title: str) -> str:
    lines = [title]
    for dataset, variants in summary.items():
        metrics = [f"test_{metric}" for metric in DATASETS[dataset]["metrics"]]
        header = ["variant", "n", *[key.removeprefix("test_") for key in metrics], "best val", "s/run"]
        rows = [header]
        for variant, entry in variants.items():
            cells = [f"{entry[key]['mean']:.3f} ± {entry[key]['std']:.3f}" if entry[key]["n"] > 1 else
                     (f"{entry[key]['mean']:.3f}" if entry[key]["n"] else "-") for key in metrics]
            wall = entry["wall_s_per_run"]["mean"]
            rows.append([variant, str(len(entry["seeds"])), *cells, f"{entry['validation_selection_metric']['mean']:.3f}",
                         f"{wall:.1f}" if wall < 10 else f"{wall:.0f}"])
        lines.append(markdown_table(f"\n{dataset}", rows))
    return "\n".join(lines)


def markdown_table(title: str, rows: list[list[str]]) -> str:
    """``title`` then a Markdown table of ``rows`` (the first is the header); "" when there is no row below it."""
    if len(rows) == 1:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title, "| " + " | ".join(cell.ljust(width) for cell, width in zip(rows[0], widths)) + " |",
             "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
    lines.extend("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in rows[1:])
    return "\n".join(lines)


def format_routing_table(summary: dict, title: str) -> str:
    """Routing-alignment metrics (test split, mean over seeds) of the variants that report them."""
    short = {"routing_expert_share_min": "share min", "routing_expert_share_max": "share max",
             "routing_synergy_share_synergistic": "syn share (syn cells)", "routing_synergy_share_other": "syn share (other)",
             "routing_redundant_pair_jsd": "JSD redundant", "routing_non_redundant_pair_jsd": "JSD non-red.",
             "routing_redundant_not_unique_pair_jsd": "JSD red. not unique", "routing_unique_pair_jsd": "JSD unique",
             "routing_non_unique_pair_jsd": "JSD non-unique"}
    rows = [["dataset", "variant", "n", *short.values(), f"val epochs < {BALANCE_FLOOR:.0%} (epoch 1)"]]
    for dataset, variants in summary.items():
        for variant, entry in variants.items():
            routing = entry.get("test_routing") or {}
            unbalanced = entry.get("validation_epochs_under_balance_floor")
            if routing:
                rows.append([dataset, variant, str(max(value["n"] for value in routing.values())),
                             *[f"{routing[key]['mean']:.3f}" if key in routing else "-" for key in short],
                             f"{unbalanced['count']} of {unbalanced['epochs']} ({unbalanced['first_epoch']})"
                             if unbalanced else "-"])
    return markdown_table(title, rows)


def format_structure_table(structure: dict, title: str, reference_variant: str = STRUCTURE_REFERENCE) -> str:
    """`structure_against_controls` as one table: each contrast's mean for the reference and the control, and in how
    many seeds the reference's is the larger."""
    rows = [["dataset", "control", "contrast", reference_variant, "control's", "reference stronger"]]
    for dataset, controls in structure.items():
        for control, contrasts in controls.items():
            rows.extend([dataset, control, name, f"{entry['reference']:+.3f}", f"{entry['control']:+.3f}",
                         f"{entry['reference_stronger']} of {len(entry['seeds'])}"]
                        for name, entry in contrasts.items())
    return markdown_table(title, rows)


def run_script(name: str, description: str, build_runs: Callable[[list[str], int, bool], list[Run]],
               default_datasets: list[str], default_seeds: int, argv: list[str] | None = None,
               extra_records: Callable[[list[str], int, bool], list[dict]] | None = None,
               structure_reference: str = STRUCTURE_REFERENCE) -> dict:
    """The command line both scripts share: choose datasets / seeds / workers, train what is missing (in
    ``build_runs``' order), print the mean ± std table, write ``benchmarks/results/<name>.json``.
    ``extra_records(datasets, seeds, smoke)``: rows computed by the script itself (quality.py's classical anchors),
    tabulated beside the runs. ``structure_reference``: the variant whose RUS structure the others are compared with
    (:func:`structure_against_controls`)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--datasets", nargs="+", default=default_datasets, choices=sorted({*DATASETS, *DATASET_ALIASES}))
    parser.add_argument("--seeds", type=int, default=default_seeds, help="seeds 0..N-1 per variant")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (one torch thread each)")
    parser.add_argument("--deadline_minutes", type=float, default=None,
                        help="launch no training run after this many minutes (runs in flight finish)")
    parser.add_argument("--smoke", action="store_true", help="tiny budget (1 epoch, 64 examples): checks the script only")
    parser.add_argument("--variants", nargs="+", default=None, help="only these variants (names as in the table)")
    parser.add_argument("--report_only", action="store_true", help="train no network; tabulate the runs that exist")
    parser.add_argument("--structure_reference", default=structure_reference,
                        help="the variant whose RUS structure the other routed variants are compared with "
                             f"(default {structure_reference!r})")
    smoke_output = RUNS_ROOT.relative_to(REPO_ROOT) / "smoke" / f"{name}.json"
    parser.add_argument("--output", default=None, help=f"JSON path (default benchmarks/results/{name}.json; "
                                                       f"with --smoke {smoke_output})")
    args = parser.parse_args(argv)
    args.datasets = list(dict.fromkeys(DATASET_ALIASES.get(dataset, dataset) for dataset in args.datasets))
    sys.path.insert(0, str(REPO_ROOT / "examples"))

    runs = build_runs(args.datasets, args.seeds, args.smoke)
    variant_names = {run.variant.name for run in runs}
    if args.structure_reference not in variant_names:
        parser.error(f"unknown --structure_reference {args.structure_reference!r}; choose from {sorted(variant_names)}")
    if args.variants:
        unknown = sorted(set(args.variants) - variant_names)
        if unknown:
            parser.error(f"unknown --variants {unknown}; choose from {sorted(variant_names)}")
        runs = [run for run in runs if run.variant.name in args.variants]
    started = time.perf_counter()
    facts = machine_facts(args.workers)
    extras = extra_records(args.datasets, args.seeds, args.smoke) if extra_records else []
    preparation, failures = {}, []
    if not args.report_only:
        deadline = None if args.deadline_minutes is None else 60.0 * args.deadline_minutes
        preparation, failures = execute(runs, args.workers, deadline, started)
    for run in runs:  # preparation records of earlier campaigns
        sidecar = Path(run.arguments()["rus_sidecar"])
        record = sidecar.with_name(sidecar.stem + ".preparation.json")
        key = f"{run.data_key}_L{run.num_rus_lags}"
        if key not in preparation and record.exists():
            preparation[key] = json.loads(record.read_text())
    summary, records = summarize(runs, extras)
    budgets = {dataset: budget_of(dataset, args.smoke) for dataset in args.datasets}
    report = {"benchmark": name, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": "python " + " ".join([f"benchmarks/{name}.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": facts, "campaign_wall_s": time.perf_counter() - started, "smoke": args.smoke,
              "seeds_requested": args.seeds, "runs_expected": len(runs),
              "runs_finished": sum(1 for record in records if "output_dir" in record), "failures": failures,
              "std": "sample standard deviation over seeds (ddof=1)", "budgets": budgets, "preparation": preparation,
              "summary": summary,
              "structure_reference": args.structure_reference,
              "structure_against_controls": structure_against_controls(records, args.structure_reference), "runs": records}
    output = Path(args.output or (RUNS_ROOT / "smoke" if args.smoke else RESULTS_DIR) / f"{name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(summary, f"\n{name}: test metrics, mean ± std over seeds "
                                f"({report['runs_finished']}/{len(runs)} training runs)"))
    routing = format_routing_table(summary, "\nrouting alignment (test split, mean over seeds)")
    if routing:
        print(routing)
    structure = format_structure_table(report["structure_against_controls"],
                                       "\nRUS structure against the controls (test split, contrasts paired by seed)",
                                       args.structure_reference)
    if structure:
        print(structure)
    for dataset, budget in budgets.items():
        print(f"budget {dataset}: {json.dumps(budget)}")
    print(f"wrote {output}")
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed:\n" + "\n".join(failures))
    return report
