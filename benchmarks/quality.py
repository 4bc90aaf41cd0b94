"""Quality on real data and on the synthetic known-RUS benchmark: MERGE (router_type rus) against the baselines
behind the router switch — a dense Transformer (``dense``), a softmax top-k MoE (``softmax``) and FuseMoE-style
per-modality Laplace gates (``laplace_per_modality``) — with one training budget per dataset for every router, and
classical anchors on exactly the same splits: gradient-boosted trees and a logistic regression on per-example
summary features (benchmarks/_features.py) and the majority class.

    python benchmarks/quality.py                       # 5 datasets × 4 routers × 5 seeds + anchors → results/quality.json
    python benchmarks/quality.py --datasets physionet2012 wesad_e4_three_class_folds --seeds 3 --deadline_minutes 60

WESAD-E4 3-class and binary run over the 5 subject folds (``*_folds``: seed k trains, selects and tests on fold k,
every subject tested once); ``wesad_e4_three_class`` / ``wesad_e4_binary`` are the builder's fixed 10 / 2 / 3 split.
    python benchmarks/quality.py --smoke               # tiny budget: checks the script runs end to end
    python benchmarks/quality.py --report_only         # tabulate the finished runs (computes missing anchors only)
    python benchmarks/quality.py --loso_anchors        # WESAD-E4 anchors over the 15 leave-one-subject-out folds

Training runs are launched in priority order: for each seed, MERGE and dense on every dataset, then softmax top-k
and the Laplace gates; ``--deadline_minutes`` stops launching new ones. Resumable: finished runs and anchors are
skipped. Budgets, protocols and run folders: benchmarks/_harness.py.

Anchors (fit on the training split only; no setting is chosen on validation or test):
* ``GBT (summaries)``: sklearn ``HistGradientBoostingClassifier`` with its defaults (100 trees of 31 leaves, learning
  rate 0.1, no early stopping at these sizes), ``random_state=seed``;
* ``logistic regression (summaries)``: ``StandardScaler`` (training split) + ``LogisticRegression`` (L2, C = 1);
* ``majority class``: the training split's most frequent class, scored with the training class frequencies.
All metrics go through ``modeling_merge.training.classification_metrics`` (the neural runs' function), with the
log class probabilities as logits. Each anchor runs with one thread (threadpoolctl).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _features import summary_features
from _harness import DATASETS, RUNS_ROOT, Run, Variant, run_script

MAIN_ROUTERS = [Variant("MERGE (rus)", {"router_type": "rus"}), Variant("dense", {"router_type": "dense"})]
OTHER_ROUTERS = [Variant("softmax top-k", {"router_type": "softmax"}),
                 Variant("laplace per modality", {"router_type": "laplace_per_modality"})]
# Diagnostics (last in priority): MERGE trained for the whole epoch budget, still selected on validation, to tell
# early stopping's effect from class weighting's; MERGE whose uniqueness loss leaves out the cells that are also
# redundant (where the paper's two rules disagree, benchmarks/README "Routing").
DIAGNOSTICS = [Variant("MERGE (rus), no early stopping", {"router_type": "rus", "early_stopping_patience": 0}),
               Variant("MERGE (rus), redundant cells not unique", {"router_type": "rus"},
                       {"uniqueness_excludes_redundant": True})]
ROUTERS = MAIN_ROUTERS + OTHER_ROUTERS
ANCHORS = ("GBT (summaries)", "logistic regression (summaries)", "majority class")


def build_runs(datasets: list[str], seeds: int, smoke: bool) -> list[Run]:
    """Priority order: per seed, MERGE and dense on every dataset (in the order given), then the other routers, then
    the diagnostics."""
    return [Run(dataset, variant, seed, smoke) for seed in range(seeds)
            for routers in (MAIN_ROUTERS, OTHER_ROUTERS, DIAGNOSTICS) for dataset in datasets for variant in routers]


def load_splits(dataset: str, smoke: bool, seed: int = 0):
    """The splits a neural run of ``dataset`` with ``seed`` trains on (its subject fold, where cross-validated): the
    same builder call (name, data_dir, options, cache) as examples/train.py's ``load_data``, and the same
    ``limit_examples`` in smoke mode."""
    import dataset_builders

    run = Run(dataset, MAIN_ROUTERS[0], seed, smoke)
    arguments = run.arguments()
    splits = dataset_builders.build(arguments["dataset"], data_dir=arguments.get("data_dir"), cache_dir=str(run.cache_dir),
                                    **json.loads(arguments.get("dataset_options", "{}")))
    metadata = dataset_builders.metadata_of(splits)
    limit = arguments.get("limit_examples", 0)
    if limit:
        splits = type(splits)({name: split.select(range(min(len(split), limit))) for name, split in splits.items()})
    return splits, metadata


def fit_anchor(name: str, seed: int, features: dict, labels: dict, num_classes: int) -> dict:
    """Fit anchor ``name`` on the training split; (N, C) log-probabilities for validation and test."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = features["train"], labels["train"]
    if name == "majority class":
        prior = np.bincount(train_y, minlength=num_classes) / len(train_y)
        return {split: np.repeat(np.log(prior + 1e-12)[None], len(labels[split]), axis=0) for split in ("validation", "test")}
    if name == "GBT (summaries)":
        model = HistGradientBoostingClassifier(random_state=seed)
    else:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    model.fit(train_x, train_y)
    outputs = {}
    for split in ("validation", "test"):
        probabilities = np.zeros((len(labels[split]), num_classes))
        probabilities[:, model.classes_] = model.predict_proba(features[split])
        outputs[split] = np.log(np.clip(probabilities, 1e-12, None))
    return outputs


def anchor_records(datasets: list[str], seeds: int, smoke: bool) -> list[dict]:
    """The anchors of every dataset and seed (on the seed's subject fold where cross-validated), cached as
    ``RUNS_ROOT/<dataset>/anchors/<anchor>/seed<k>.json``."""
    from threadpoolctl import threadpool_limits

    from modeling_merge.training import classification_metrics

    records = []
    for dataset in datasets:
        root = RUNS_ROOT / ("smoke" if smoke else "") / dataset / "anchors"
        paths = {(name, seed): root / name.split(" ")[0].lower() / f"seed{seed}.json" for name in ANCHORS for seed in range(seeds)}
        data = {}  # data key (the dataset, or one subject fold of it) → (features, labels, label count, feature names, s)
        selection = DATASETS[dataset]["train"].get("selection_metric", "macro_f1")
        for (name, seed), path in paths.items():
            if path.exists():
                records.append(json.loads(path.read_text()))
                continue
            key = Run(dataset, MAIN_ROUTERS[0], seed, smoke).data_key
            if key not in data:
                started = time.perf_counter()
                splits, metadata = load_splits(dataset, smoke, seed)
                features, labels = {}, {}
                for split in ("train", "validation", "test"):
                    features[split], names = summary_features(splits[split], metadata.modality_names, metadata.channel_names)
                    labels[split] = np.asarray(splits[split]["label"], dtype=np.int64)
                data[key] = features, labels, len(metadata.label_names), names, time.perf_counter() - started
                print(f"anchors {key}: {features['train'].shape[1]} summary features, {data[key][4]:.1f} s to build them")
            features, labels, num_classes, names, feature_s = data[key]
            fit_started = time.perf_counter()
            with threadpool_limits(limits=1):
                outputs = fit_anchor(name, seed, features, labels, num_classes)
            wall_s = time.perf_counter() - fit_started
            metrics = {split: classification_metrics(outputs[split], labels[split]) for split in outputs}
            record = {"dataset": dataset, "variant": name, "seed": seed, "test": metrics["test"],
                      "validation": metrics["validation"], "validation_curve": [metrics["validation"][selection]],
                      "wall_s": wall_s, "features": len(names), "feature_s": feature_s, "anchor": True}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2))
            records.append(record)
            print(f"  {name} seed {seed}: val {selection} {metrics['validation'][selection]:.3f}, "
                  f"test {json.dumps({k: round(v, 3) for k, v in metrics['test'].items()})} ({wall_s:.1f} s)")
    return records


def loso_anchors(tasks: tuple[str, ...] = ("three_class", "binary")) -> dict:
    """GBT and logistic-regression anchors over WESAD-E4's 15 leave-one-subject-out folds (builder ``loso_fold``; same
    protocol options as the benchmark), to show how much the fixed 3-subject test split says. Anchors only: the
    networks' budget does not allow 15 folds. Writes ``benchmarks/results/quality_loso_anchors.json``."""
    import datetime

    from threadpoolctl import threadpool_limits

    import dataset_builders
    from modeling_merge.training import classification_metrics

    report = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": "python benchmarks/quality.py --loso_anchors", "folds": {}, "summary": {}}
    for task in tasks:
        dataset = f"wesad_e4_{task}"
        arguments = Run(dataset, MAIN_ROUTERS[0], 0).arguments()
        options = json.loads(arguments["dataset_options"])
        pooled = {name: {"logits": [], "labels": []} for name in ANCHORS[:2]}
        for fold in range(15):
            splits = dataset_builders.build(arguments["dataset"], data_dir=arguments["data_dir"],
                                            cache_dir=str(RUNS_ROOT / "cache" / f"{dataset}_loso"), loso_fold=fold, **options)
            metadata = dataset_builders.metadata_of(splits)
            features = {split: summary_features(splits[split], metadata.modality_names)[0] for split in splits}
            labels = {split: np.asarray(splits[split]["label"], dtype=np.int64) for split in splits}
            for name in ANCHORS[:2]:
                with threadpool_limits(limits=1):
                    outputs = fit_anchor(name, 0, features, labels, len(metadata.label_names))
                pooled[name]["logits"].append(outputs["test"])
                pooled[name]["labels"].append(labels["test"])
                metrics = classification_metrics(outputs["test"], labels["test"]) if len(set(labels["test"])) > 1 else {}
                report["folds"].setdefault(dataset, {}).setdefault(name, []).append(
                    {"fold": fold, "test_subject": metadata.split_units["test"], "n": len(labels["test"]), **metrics})
        for name in ANCHORS[:2]:
            folds = report["folds"][dataset][name]
            macro = [fold["macro_f1"] for fold in folds if "macro_f1" in fold]
            pooled_metrics = classification_metrics(np.concatenate(pooled[name]["logits"]), np.concatenate(pooled[name]["labels"]))
            report["summary"].setdefault(dataset, {})[name] = {
                "per_fold_macro_f1": {"mean": float(np.mean(macro)), "std": float(np.std(macro, ddof=1)),
                                      "min": float(np.min(macro)), "max": float(np.max(macro)), "n": len(macro)},
                "pooled_test": pooled_metrics}
            print(f"{dataset} {name}: per-fold macro-F1 {np.mean(macro):.3f} ± {np.std(macro, ddof=1):.3f} "
                  f"(min {np.min(macro):.3f}, max {np.max(macro):.3f}); pooled {json.dumps({k: round(v, 3) for k, v in pooled_metrics.items()})}")
    output = Path(__file__).resolve().parent / "results" / "quality_loso_anchors.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return report


if __name__ == "__main__":
    if sys.argv[1:] == ["--loso_anchors"]:
        loso_anchors()
        sys.exit()
    run_script("quality", __doc__.splitlines()[0], build_runs,
               ["physionet2012", "wesad_e4_three_class_folds", "wesad_e4_binary_folds", "wesad_e4_paper", "synthetic"], 5,
               extra_records=anchor_records)
