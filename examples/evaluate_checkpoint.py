"""Evaluate a MERGE checkpoint and draw what it learned; compare ablation runs.

    python examples/evaluate_checkpoint.py --checkpoint outputs/synthetic_rus/best_model    # the run's dataset, test split
    python examples/evaluate_checkpoint.py --checkpoint org/merge-wesad --dataset wesad_e4 --data_dir ../shared/data/wesad_e4
    python examples/evaluate_checkpoint.py --ablation_runs runs/full runs/no_redundancy runs/no_synergy --output_dir runs/ablation

Writes under ``--output_dir``: ``evaluation.json`` (metrics on ``--split``), ``routing.png`` (share of each
modality's routing slots per expert per MoE layer, paper Fig. 8), ``temporal_rus.png`` (the RUS curves stored
in the checkpoint, paper Fig. 5) and, with ``--ablation_runs`` (folders written by ``train.py``, e.g. with
``--disable_aux_loss``), ``ablation.png`` comparing their test metrics (paper Fig. 7).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataset_builders  # noqa: E402
from modeling_merge.files import atomic_write  # noqa: E402
from modeling_merge.from_dataset import head_class  # noqa: E402
from modeling_merge.plotting import plot_ablation  # noqa: E402
from modeling_merge.rus.sidecar import check_modalities_match  # noqa: E402
from modeling_merge.training import MultimodalCollator, evaluate_model, interpretation_figures  # noqa: E402


@dataclass
class EvaluateArguments:
    checkpoint: str | None = field(default=None, metadata={"help": "folder or Hub repo id of a MERGE checkpoint"})
    dataset: str | None = field(default=None, metadata={
        "help": "builder name, as in train.py (None: the run's, from results.json beside a local checkpoint; "
                "else synthetic)", "choices": tuple(sorted({*dataset_builders.BUILDERS, *dataset_builders.BUILDER_ALIASES}))})
    data_dir: str | None = field(default=None, metadata={"help": "raw files of the dataset (None: the run's)"})
    dataset_options: str | None = field(default=None, metadata={"help": "JSON builder options (None: the run's)"})
    split: str = field(default="test", metadata={"help": "split to score", "choices": ("train", "validation", "test")})
    batch_size: int = field(default=64, metadata={"help": "examples per forward pass"})
    output_dir: str = field(default="outputs/evaluation", metadata={"help": "where evaluation.json and the figures go"})
    ablation_runs: list[str] = field(default_factory=list, metadata={
        "help": "train.py output folders to compare in ablation.png (labelled by router, disabled losses and RUS "
                "ablation; runs that would share a label get their folder name added)"})


def training_run_defaults(checkpoint: str) -> dict:
    """Dataset, data_dir and builder options of the train.py run a local checkpoint folder belongs to (its
    parent's results.json), so the checkpoint is scored on data built like its training data; {} otherwise."""
    results_path = Path(checkpoint).parent / "results.json"
    if not Path(checkpoint).is_dir() or not results_path.is_file():
        return {}
    results = json.loads(results_path.read_text())
    return {"dataset": results["dataset"], "data_dir": results.get("data_dir"),
            "dataset_options": results.get("dataset_options", {})}


def evaluate_checkpoint(args: EvaluateArguments) -> dict:
    output_dir = Path(args.output_dir)
    run = training_run_defaults(args.checkpoint)
    dataset = args.dataset or run.get("dataset", "synthetic")
    data_dir = args.data_dir or run.get("data_dir")
    options = json.loads(args.dataset_options) if args.dataset_options else run.get("dataset_options", {})
    splits = dataset_builders.build(dataset, data_dir=data_dir, cache_dir=str(output_dir / "cache"), **options)
    metadata = dataset_builders.metadata_of(splits)
    if args.split not in splits:
        raise KeyError(f"split {args.split!r} is not in the dataset (splits: {sorted(splits)})")
    model = head_class(metadata).from_pretrained(args.checkpoint)  # per-step labels: the token head
    check_modalities_match(model.config.modalities, metadata.modalities, f"checkpoint {args.checkpoint}")
    loader = DataLoader(splits[args.split].with_format("numpy"), batch_size=args.batch_size,
                        collate_fn=MultimodalCollator(metadata.modality_names, problem_type=model.config.problem_type))
    metrics, _, _ = evaluate_model(model, loader)
    lags_seconds = [lag / metadata.token_grid_hz for lag in range(model.config.num_rus_lags)]  # as train.py draws them
    figures = interpretation_figures(model, loader, output_dir, lags_seconds)
    report = {"checkpoint": args.checkpoint, "dataset": metadata.name, "split": args.split, "metrics": metrics,
              "figures": [str(path) for path in figures]}
    atomic_write(output_dir / "evaluation.json", json.dumps(report, indent=2))
    print(f"{metadata.name} {args.split}: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    print("figures: " + ", ".join(report["figures"]))
    return report


def ablation_label(results: dict) -> str:
    """A run's label in the ablation figure: router, disabled auxiliary losses and RUS ablation."""
    disabled = results["disabled_aux_losses"]
    label = f"{results['router_type']}" + (f" − {'/'.join(disabled)}" if disabled else " (all losses)")
    ablation = results.get("rus_ablation", "none")
    return label + (f", RUS {ablation}" if ablation != "none" else "")


def compare_ablations(run_dirs: list[str], output_dir: Path) -> Path:
    """Bar chart of the test metrics of several train.py runs, one bar group per run (:func:`ablation_label`;
    runs that would share a label, e.g. two seeds, get their folder added). A folder given twice is refused."""
    folders = [Path(run_dir).resolve() for run_dir in run_dirs]
    repeated = sorted({str(folder) for folder in folders if folders.count(folder) > 1})
    if repeated:
        raise ValueError(f"--ablation_runs names the same run more than once: {repeated}")
    labelled = []
    for run_dir in run_dirs:
        results_path = Path(run_dir) / "results.json"
        if not results_path.exists():
            raise FileNotFoundError(f"{results_path} is missing: {run_dir} is not a finished examples/train.py run")
        results = json.loads(results_path.read_text())
        scores = {name: value for name, value in results["test"].items() if not name.startswith("routing_")}
        labelled.append((ablation_label(results), run_dir, scores))  # routing metrics are not scores: left out
    labels = [label for label, _, _ in labelled]
    runs = {(f"{label} [{run_dir}]" if labels.count(label) > 1 else label): test for label, run_dir, test in labelled}
    path = plot_ablation(runs, output_dir / "ablation.png")
    print(f"ablation figure: {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    if not args.checkpoint and not args.ablation_runs:
        raise SystemExit("give --checkpoint (evaluate one model) and/or --ablation_runs (compare train.py runs)")
    if args.checkpoint:
        evaluate_checkpoint(args)
    if args.ablation_runs:
        compare_ablations(args.ablation_runs, Path(args.output_dir))


if __name__ == "__main__":
    main()
