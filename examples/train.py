"""Train and evaluate MERGE with Accelerate: dataset → RUS sidecar → model → best-validation checkpoint → test.

With no arguments this is the project's main job: the synthetic benchmark with planted (known) temporal RUS is
built, its RUS estimated on the training split, MERGE trained and evaluated in a few minutes on 2 CPU cores,
and a table compares the test metrics and the planted vs estimated RUS structure.

    python examples/train.py                                         # the main job
    python examples/train.py --dataset wesad_e4 --data_dir ../shared/data/wesad_e4
    python examples/train.py --dataset physionet2012 --data_dir ../shared/data/physionet2012
    python examples/train.py --router_type laplace                   # FuseMoE baseline
    python examples/train.py --disable_aux_loss redundancy synergy   # ablation (paper Fig. 7)
    python examples/train.py --rus_ablation noise                    # RUS replaced by noise (paper Fig. 14)
    python examples/train.py --resume                                # continue a killed run in its --output_dir
    python examples/train.py --dataset pamap2 --data_dir ../shared/data/pamap2 \
        --dataset_options '{"label_granularity": "step"}'           # per-step labels: MergeForTokenClassification
    python examples/train.py --dataset mosi --data_dir ../shared/data/mosi \
        --dataset_options '{"task": "regression", "allow_pickle": true}'   # sentiment score: regression head
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/train.py   # 2-process DDP (gloo)

``--output_dir`` defaults to ``outputs/<dataset>_<router>`` (plus ``_no_<loss>`` / ``_rus_<ablation>`` for
ablations), so runs of different datasets, routers or ablations never share a folder. Artifacts there:
``rus.safetensors`` (unless ``--rus_sidecar`` points elsewhere; estimated with the ``--rus_*`` budget, and only for
the ``rus`` router: the baselines load it when it exists and never estimate it), ``checkpoints/checkpoint-<step>``
(``accelerator.save_state`` + ``run_state.json`` + ``manifest.json``, every epoch), ``best_model/``
(``save_pretrained`` + the processor), ``metrics.jsonl``, ``results.json``, ``routing.png`` and ``temporal_rus.png``;
``run.lock`` while the run lasts: one run at a time per folder, and per sidecar path while it is estimated
(``<sidecar>.lock``). Every file is written atomically under the user's umask; a checkpoint whose files do not
match its manifest is skipped on ``--resume`` (the previous intact one is used, and named).

The glue from data to model is the library's: ``RusSidecar.for_dataset`` (estimate once, cache, check) and
``modeling_merge.from_dataset.model_from_dataset``; this script adds the training loop around them.

The head and loss follow the data's metadata: ``MergeForSequenceClassification`` (cross-entropy) for one class
per window, ``MergeForTokenClassification`` (cross-entropy over the labelled steps, -100 ignored) for per-step
labels, and the regression head (mean squared error) for a regression target. The selection metric defaults to
macro-F1 for classification and RMSE (lower is better) for regression; results.json and the table add the
trivial predictor's test metrics (the majority class, or the training mean for regression).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, LoggerType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataset_builders  # noqa: E402
from dataset_builders.synthetic import planted_structure  # noqa: E402
from modeling_merge.configuration_merge import ROUTER_TYPES  # noqa: E402
from modeling_merge.files import (  # noqa: E402
    TEMPORARY_SUFFIX,
    apply_umask,
    atomic_directory,
    atomic_write,
    exclusive_lock,
    fsync_tree,
    remove_leftovers,
)
from modeling_merge.from_dataset import AUX_LOSSES, model_from_dataset  # noqa: E402
from modeling_merge.modeling_merge import MergePreTrainedModel, labelled_cross_entropy  # noqa: E402
from modeling_merge.rus_routing import per_modality_uniqueness  # noqa: E402
from modeling_merge.processing_merge import MergeProcessor  # noqa: E402
from modeling_merge.rus import BatchConfig, RusSidecar  # noqa: E402
from modeling_merge.rus.cli import INFORMATION_READOUTS  # noqa: E402
from modeling_merge.rus.sidecar import RUS_ABLATIONS, check_modalities_match  # noqa: E402
from modeling_merge.rus.temporal import ESTIMATORS  # noqa: E402
from modeling_merge.training import (  # noqa: E402
    MetricsLog,
    IGNORE_INDEX,
    MultimodalCollator,
    changed_settings,
    checkpoints_by_step,
    drop_checkpoints_from,
    evaluate_model,
    interpretation_figures,
    latest_checkpoint,
    parameter_groups,
    prune_checkpoints,
    routing_balance_warning,
    routing_summary,
    task_metrics,
)

DATASETS = tuple(sorted({*dataset_builders.BUILDERS, *dataset_builders.BUILDER_ALIASES}))
TRACKERS = ("all", "none", *sorted(tracker.value for tracker in LoggerType if tracker.value != "all"))
TASK_METRICS = {"single_label_classification": ("accuracy", "macro_f1", "roc_auc", "average_precision"),
                "regression": ("rmse", "mae", "r2")}  # average_precision: binary tasks; per-step labels: per step
DEFAULT_SELECTION_METRIC = {"single_label_classification": "macro_f1", "regression": "rmse"}
LOWER_IS_BETTER = ("rmse", "mae")
SELECTION_METRICS = ("auto", *dict.fromkeys(name for names in TASK_METRICS.values() for name in names))
RESUMABLE_CHANGES = ("resume", "output_dir", "report_to", "checkpoint_every_steps", "keep_checkpoints",
                     "dataset_cache_dir")  # output_dir: a run folder may be moved
ADDED_SETTINGS = ("rus_discriminator_steps", "rus_alignment_steps", "rus_batch_size", "rus_pair_block_size",
                  "rus_information_readout")  # recorded only when set: runs started before them resume
RUS_ROUTERS = ("rus",)  # the routers that read the RUS sidecar
CLASS_WEIGHTINGS = ("none", "balanced")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
MANIFEST = "manifest.json"


@dataclass
class TrainArguments:
    """Command-line options (`--name value`); every one has a default, so no config file is needed. Options with a
    fixed set of values list it (``choices``) and are checked before any data is built."""

    dataset: str = field(default="synthetic", metadata={"help": "dataset builder", "choices": DATASETS})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the benchmark's raw files (not for synthetic)"})
    dataset_options: str = field(default="{}", metadata={"help": "JSON of builder config fields, e.g. '{\"window\": 50}'"})
    hub_dataset: str | None = field(default=None, metadata={"help": "Hub dataset repo or exported folder (dataset_builders.publish) "
                                                                     "instead of a builder"})
    output_dir: str | None = field(default=None, metadata={
        "help": "where checkpoints, logs and figures go; None: outputs/<dataset>_<router_type>, plus _no_<loss> for "
                "each --disable_aux_loss and _rus_<ablation> for --rus_ablation"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "where the built dataset is cached (None: "
                                                                          "<output_dir>/cache); runs may share one"})
    rus_sidecar: str | None = field(default=None, metadata={"help": "RUS sidecar to load; estimated and cached there if absent "
                                                                    "(None: <output_dir>/rus.safetensors)"})
    rus_estimator: str = field(default="multiscale_batch", metadata={"help": "RUS estimator", "choices": ESTIMATORS})
    num_rus_lags: int = field(default=4, metadata={"help": "L, lags of the temporal RUS"})
    rus_discriminator_steps: int = field(default=BatchConfig.discriminator_steps, metadata={
        "help": "BATCH estimators: discriminator training steps (minibatches over all lags)"})
    rus_alignment_steps: int = field(default=BatchConfig.alignment_steps, metadata={
        "help": "BATCH estimators: Sinkhorn alignment training steps"})
    rus_batch_size: int = field(default=BatchConfig.batch_size, metadata={"help": "BATCH estimators: samples per batch"})
    rus_pair_block_size: int | None = field(default=BatchConfig.pair_block_size, metadata={
        "help": "BATCH estimators: modality pairs per independent block (None: all pairs in one block)"})
    rus_information_readout: str = field(default=BatchConfig.information_readout, metadata={
        "help": "BATCH estimators: plugin (the paper's read-out) or cross_entropy (H(Y) - held-out cross-entropy, "
                "which an overfit discriminator cannot inflate)", "choices": INFORMATION_READOUTS})
    rus_ablation: str = field(default="none", metadata={
        "help": "replace the loaded RUS (paper Fig. 14): zeros, noise (uniform, each kind's mean kept) or "
                "shuffled (each kind's values permuted over modality pairs and lags)", "choices": RUS_ABLATIONS})
    router_type: str = field(default="rus", metadata={
        "help": "rus (MERGE), softmax, laplace (FuseMoE), laplace_per_modality, dense; only rus reads the RUS: the "
                "others load --rus_sidecar when it exists and never estimate it", "choices": ROUTER_TYPES})
    disable_aux_loss: list[str] = field(default_factory=list, metadata={"help": "auxiliary losses to switch off",
                                                                         "choices": AUX_LOSSES})
    model_options: str = field(default='{"d_model": 32, "num_blocks": 2, "num_moe_blocks": 2, "num_encoder_layers": 1, '
                                        '"ffn_dim": 64, "expert_hidden_dim": 64, "num_attention_heads": 4}',
                               metadata={"help": "JSON of MergeConfig fields (the default is a small model for CPU)"})
    num_epochs: int = field(default=6, metadata={"help": "training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: no limit)"})
    batch_size: int = field(default=32, metadata={"help": "global batch size of one forward pass (split over processes)"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "forward passes per optimizer step (Accelerate's accumulate): the effective batch is "
                "batch_size × this, at the memory of batch_size"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW decoupled weight decay, applied to weight matrices "
                                                                "only (never to biases or normalisation weights)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of the optimizer steps spent in linear warmup, "
                                                                "then cosine decay"})
    class_weighting: str = field(default="none", metadata={
        "help": "none, or balanced: the cross-entropy weights class c by N / (C * N_c), counted on the training split "
                "(over its labelled steps for per-step labels; for imbalanced tasks such as PhysioNet's 14 %% "
                "positive); classification only", "choices": CLASS_WEIGHTINGS})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "stop once the selection metric has not improved for this many epochs (0: train all --num_epochs)"})
    selection_metric: str = field(default="auto", metadata={
        "help": "validation metric that picks the best checkpoint; classification (per window or per step): "
                "accuracy, macro_f1, roc_auc, average_precision (binary tasks); regression: rmse, mae (lower is "
                "better), r2; auto: macro_f1 for classification, rmse for regression", "choices": SELECTION_METRICS})
    seed: int = field(default=0, metadata={"help": "seed of the model initialisation, data order and RUS estimation"})
    resume: bool = field(default=False, metadata={"help": "continue from the latest intact checkpoint in "
                                                          "output_dir/checkpoints; every other setting must be the "
                                                          "run's, except output_dir (a moved run), report_to, "
                                                          "checkpoint_every_steps, keep_checkpoints and dataset_cache_dir"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "also save state every N optimizer steps (0: only "
                                                                     "at epoch ends)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many of the newest checkpoints to keep"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, no on CPU), no, fp16, bf16",
                                                           "choices": MIXED_PRECISIONS})
    cpu: bool = field(default=False, metadata={"help": "train on CPU even if a GPU is present"})
    report_to: str = field(default="all", metadata={"help": "Accelerate tracker (all: those installed, none: off)",
                                                    "choices": TRACKERS})
    limit_examples: int = field(default=0, metadata={"help": "use only the first N examples of each split (0: all)"})


def default_output_dir(args: TrainArguments) -> str:
    """``outputs/<dataset>_<router_type>[_no_<loss>…][_rus_<ablation>]``: one folder per dataset, router and ablation."""
    dataset = Path(args.hub_dataset.rstrip("/")).name if args.hub_dataset else args.dataset
    name = f"{dataset}_{args.router_type}" + "".join(f"_no_{loss}" for loss in sorted(args.disable_aux_loss))
    if args.rus_ablation != "none":
        name += f"_rus_{args.rus_ablation}"
    return str(Path("outputs") / name)


def check_arguments(args: TrainArguments) -> TrainArguments:
    """Refuse, before any work, an option outside its choices, a non-JSON option or a count out of range, naming
    the option; fills in the default ``output_dir``. Returns ``args``."""
    for option in fields(args):
        choices, value = option.metadata.get("choices"), getattr(args, option.name)
        for item in value if isinstance(value, list) else [value]:
            if choices and item not in choices:
                raise ValueError(f"unknown --{option.name} {item!r}; choose one of {tuple(choices)}")
    json_option(args, "dataset_options")
    json_option(args, "model_options")
    for name, least in (("num_epochs", 1), ("batch_size", 1), ("gradient_accumulation_steps", 1), ("num_rus_lags", 1),
                        ("keep_checkpoints", 1), ("early_stopping_patience", 0), ("checkpoint_every_steps", 0),
                        ("limit_examples", 0)):
        if getattr(args, name) < least:
            raise ValueError(f"--{name} must be ≥ {least}, got {getattr(args, name)}")
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
    return args


@dataclass(frozen=True)
class Selection:
    """The validation metric that picks the best checkpoint and whether a higher value is better."""

    metric: str
    higher_is_better: bool

    def score(self, metrics: dict) -> float:
        """The metric signed so that higher is better (what ``RunState.best_score`` keeps)."""
        return metrics[self.metric] if self.higher_is_better else -metrics[self.metric]


def check_task_options(args: TrainArguments, metadata) -> Selection:
    """Refuse, before the RUS is estimated or a model built, a ``--selection_metric`` or ``--class_weighting``
    that the data's problem type does not have, naming the valid ones; returns the selection metric (``auto``
    resolved: macro-F1 for classification, RMSE for regression)."""
    problem_type = metadata.problem_type
    metric = DEFAULT_SELECTION_METRIC[problem_type] if args.selection_metric == "auto" else args.selection_metric
    task = "regression" if problem_type == "regression" else f"{metadata.label_granularity} classification"
    if metric not in TASK_METRICS[problem_type]:
        raise ValueError(f"--selection_metric {metric} does not apply to {metadata.name} ({task}); choose one of "
                         f"{TASK_METRICS[problem_type]} (or auto)")
    if metric == "average_precision" and metadata.num_labels != 2:
        raise ValueError(f"--selection_metric average_precision needs a binary task; {metadata.name} has "
                         f"{metadata.num_labels} classes: choose accuracy, macro_f1 or roc_auc")
    if args.class_weighting != "none" and problem_type == "regression":
        raise ValueError(f"--class_weighting {args.class_weighting} weights classes, but {metadata.name} has a "
                         "regression target: use --class_weighting none")
    return Selection(metric, metric not in LOWER_IS_BETTER)


@dataclass
class RunState:
    """What `--resume` needs besides Accelerate's state: progress and the best validation score so far."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    best_metrics: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def json_option(args: TrainArguments, name: str) -> dict:
    """The JSON object given as ``--<name>``, or an error naming the option."""
    try:
        value = json.loads(getattr(args, name))
    except json.JSONDecodeError as error:
        raise ValueError(f"--{name} is not JSON ({error}): pass an object such as '{{\"window\": 50}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"--{name} must be a JSON object of field: value pairs, got {getattr(args, name)!r}")
    return value


def run_settings(args: TrainArguments, accelerator: Accelerator, selection: Selection) -> dict:
    """The settings a resumed run must share with the run it continues: every argument but `RESUMABLE_CHANGES`
    and the `ADDED_SETTINGS` left at their defaults (so runs started before those options existed resume) (JSON
    options parsed, so each field is compared by name, and the selection metric as ``selection`` resolves it,
    so ``auto`` matches a run that named its metric) and the process count."""
    defaults = TrainArguments.__dataclass_fields__
    settings = {name: value for name, value in asdict(args).items() if name not in RESUMABLE_CHANGES
                and not (name in ADDED_SETTINGS and value == defaults[name].default)}
    settings.update(dataset_options=json_option(args, "dataset_options"), model_options=json_option(args, "model_options"),
                    selection_metric=selection.metric, num_processes=accelerator.num_processes)
    return settings


class NonFiniteLossError(RuntimeError):
    pass


def load_data(args: TrainArguments, accelerator: Accelerator):
    """The `DatasetDict` (train / validation / test) and its `DatasetMetadata`."""
    cache_dir = Path(args.dataset_cache_dir or Path(args.output_dir) / "cache")
    if args.hub_dataset:
        from dataset_builders.publish import load_published

        with accelerator.main_process_first():
            splits = load_published(args.hub_dataset, cache_dir=cache_dir)
    else:
        with accelerator.main_process_first():
            splits = dataset_builders.build(args.dataset, data_dir=args.data_dir, cache_dir=str(cache_dir), **json_option(args, "dataset_options"))
    metadata = dataset_builders.metadata_of(splits)
    if args.limit_examples:
        splits = type(splits)({split: data.select(range(min(len(data), args.limit_examples))) for split, data in splits.items()})
    return splits, metadata


def rus_config(args: TrainArguments) -> BatchConfig:
    """The estimator budget of the ``--rus_*`` options (seeded by ``--seed``)."""
    return BatchConfig(discriminator_steps=args.rus_discriminator_steps, alignment_steps=args.rus_alignment_steps,
                       batch_size=args.rus_batch_size, pair_block_size=args.rus_pair_block_size,
                       information_readout=args.rus_information_readout, seed=args.seed)


def load_or_estimate_rus(args: TrainArguments, splits, metadata, accelerator: Accelerator) -> RusSidecar | None:
    """The training split's RUS sidecar (``RusSidecar.for_dataset``): estimated once by the main process into
    ``--rus_sidecar`` (resumable, one process at a time), then loaded and checked against the data by every process.
    A router that does not read the RUS never estimates it: None when no sidecar file exists (the model holds no
    RUS, and the routing-alignment metrics and RUS summary are left out)."""
    path = Path(args.rus_sidecar or Path(args.output_dir) / "rus.safetensors")
    if args.router_type not in RUS_ROUTERS and not path.exists():
        accelerator.print(f"router {args.router_type} does not read the RUS: none estimated (no {path})")
        return None
    options = dict(num_lags=args.num_rus_lags, estimator=args.rus_estimator, cache=path, config=rus_config(args),
                   progress=accelerator.is_local_main_process)
    if accelerator.is_main_process and not path.exists():
        accelerator.print(f"estimating temporal RUS ({args.rus_estimator}, {args.num_rus_lags} lags) on the training split")
        RusSidecar.for_dataset(splits, metadata, **options)
    accelerator.wait_for_everyone()
    return RusSidecar.for_dataset(splits, metadata, **options)


def class_weights(args: TrainArguments, train_split, num_labels: int) -> torch.Tensor | None:
    """``--class_weighting balanced``: weight N / (C · N_c) per class c from the training split's class ids
    (per-step labels: N counts the labelled steps, -100 left out), (C,) float32; None for ``none``. A class absent
    from the training split is an error (its weight is undefined)."""
    if args.class_weighting == "none":
        return None
    labels = np.asarray(train_split["label"], dtype=np.int64).reshape(-1)
    counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=num_labels)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"--class_weighting balanced: class id(s) {missing} never occur in the training split, so "
                         "their weight is undefined; use --class_weighting none or another split")
    return torch.tensor(counts.sum() / (num_labels * counts), dtype=torch.float32)


def training_loss(outputs, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The model's own loss (its problem type's loss + auxiliary routing losses), or with ``weights`` (C,) the
    class-weighted cross-entropy in its place (`labelled_cross_entropy`: over the labelled examples, or steps as
    ``MergeForTokenClassification`` maps them; the auxiliary losses kept)."""
    if weights is None:
        return outputs.loss
    device = outputs.logits.device
    cross_entropy = labelled_cross_entropy(outputs.logits, labels.to(device), weights.to(device))
    return cross_entropy + (outputs.aux_loss if outputs.aux_loss is not None else 0.0)


def baseline_metrics(splits, metadata, problem_type: str) -> tuple[str, dict]:
    """The test metrics of the trivial predictor (name, metrics): the training split's majority class (its
    labelled steps' for per-step labels), scored with the training class frequencies; for regression the
    training mean. What a model must beat."""
    train_labels = np.asarray(splits["train"]["label"])
    test_labels = np.asarray(splits["test"]["label"])
    if problem_type == "regression":
        predictions = np.full((len(test_labels), 1), train_labels.astype(np.float64).mean())
        return "training mean", task_metrics(predictions, test_labels, problem_type)
    labelled = train_labels[train_labels != IGNORE_INDEX].astype(np.int64)
    frequencies = np.bincount(labelled, minlength=metadata.num_labels) / labelled.size
    shape = (len(test_labels), metadata.window) if test_labels.ndim == 2 else (len(test_labels),)
    return "majority class", task_metrics(np.broadcast_to(frequencies, (*shape, metadata.num_labels)), test_labels,
                                          problem_type)


def make_loader(split, collator, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split.with_format("numpy"), batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      generator=generator, drop_last=False)


def patience_spent(args: TrainArguments, state: RunState) -> bool:
    """Early stopping: the selection metric has not improved for ``--early_stopping_patience`` epochs."""
    return args.early_stopping_patience > 0 and state.best_epoch > 0 and \
        state.epoch - state.best_epoch >= args.early_stopping_patience


def build_model(args: TrainArguments, metadata, sidecar: RusSidecar | None) -> MergePreTrainedModel:
    """The model the options describe for this data, holding ``sidecar``'s RUS (``model_from_dataset``: the head
    and problem type the metadata implies)."""
    return model_from_dataset(metadata, sidecar, args.num_rus_lags, args.disable_aux_loss, router_type=args.router_type,
                              **json_option(args, "model_options"))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_run_state(accelerator: Accelerator, checkpoints: Path, state: RunState) -> None:
    """`accelerator.save_state` (every rank writes its RNG state) plus the run state and a manifest (size and
    SHA-256 of every file) into a hidden partial folder that is fsync'ed and renamed to ``checkpoint-<global
    step>`` only once complete, so a kill mid-write loses nothing and a later corruption is detected on resume.
    Older checkpoints are pruned only once this one's weights have given a finite loss (or the run has ended)."""
    target = checkpoints / f"checkpoint-{state.global_step}"
    partial = checkpoints / f".checkpoint-{state.global_step}{TEMPORARY_SUFFIX}"  # remove_leftovers knows the name
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write(partial / "run_state.json", json.dumps(asdict(state)))
        manifest = {str(path.relative_to(partial)): {"bytes": path.stat().st_size, "sha256": file_digest(path)}
                    for path in sorted(partial.rglob("*")) if path.is_file()}
        atomic_write(partial / MANIFEST, json.dumps(manifest, indent=1))
        apply_umask(partial)
        fsync_tree(partial)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
        fsync_tree(checkpoints)
    accelerator.wait_for_everyone()


def checkpoint_damage(checkpoint: Path) -> list[str]:
    """The files of ``checkpoint`` that are missing, truncated or changed against its manifest (empty when intact;
    a checkpoint written before manifests were kept is checked for ``run_state.json`` only)."""
    if not (checkpoint / MANIFEST).is_file():
        return [] if (checkpoint / "run_state.json").is_file() else ["run_state.json (missing)"]
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        return [f"{MANIFEST} ({error})"]
    damage = []
    for name, expected in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            damage.append(f"{name} (missing)")
        elif path.stat().st_size != expected["bytes"]:
            damage.append(f"{name} ({path.stat().st_size} bytes, {expected['bytes']} written)")
        elif file_digest(path) != expected["sha256"]:
            damage.append(f"{name} (content changed since it was written)")
    return damage


def intact_checkpoint(checkpoints: Path, accelerator: Accelerator) -> Path | None:
    """The newest checkpoint whose files match its manifest (None when there is no checkpoint). Each damaged newer
    one is named, with its damaged files, and skipped; when every checkpoint is damaged the error names them all —
    a run never resumes from a checkpoint it cannot restore exactly (Accelerate would silently skip unreadable
    ``random_states_*.pkl`` and diverge)."""
    found = checkpoints_by_step(checkpoints)
    damaged = []
    for _, checkpoint in reversed(found):
        damage = checkpoint_damage(checkpoint)
        if not damage:
            for skipped, what in damaged:
                accelerator.print(f"--resume: {skipped} is damaged ({'; '.join(what)}); resuming from the previous "
                                  f"intact checkpoint {checkpoint} instead")
            return checkpoint
        damaged.append((checkpoint, damage))
    if damaged:
        listing = "; ".join(f"{checkpoint}: {', '.join(what)}" for checkpoint, what in damaged)
        raise ValueError(f"--resume: no intact checkpoint in {checkpoints} ({listing}). Restore the files, or start a "
                         "new run in another --output_dir.")
    return None


def available_trackers() -> list:
    """The experiment trackers Accelerate finds installed (``pip install -e ".[tracking]"`` adds TensorBoard)."""
    from accelerate.tracking import _available_trackers

    return list(_available_trackers)


def earlier_run_error(checkpoints: Path, settings: dict) -> FileExistsError:
    """The error for a new run in a folder that holds an earlier run's checkpoints, saying what to do: a finished run
    (``results.json``) is kept, an unfinished one with the same settings is continued with ``--resume``, one with
    other settings (named) needs another ``--output_dir``."""
    latest = latest_checkpoint(checkpoints)
    try:
        recorded = json.loads((latest / "run_state.json").read_text())["settings"]
    except (OSError, ValueError, KeyError):
        recorded = None
    changes = changed_settings(recorded, settings) if recorded is not None else ["(unreadable run_state.json)"]
    folder = checkpoints.parent
    if changes:
        advice = (f"it was started with other settings ({'; '.join(changes)}), so --resume would refuse them: choose "
                  "another --output_dir for this run")
    elif (folder / "results.json").is_file():
        advice = ("that run, with these same settings, has finished (results.json): to train it again choose another "
                  "--output_dir, or delete the folder")
    else:
        advice = "that run, with these same settings, has not finished: pass --resume to continue it"
    return FileExistsError(f"{folder} holds checkpoints of an earlier run; {advice}.")


def train(args: TrainArguments) -> dict:
    check_arguments(args)
    output_dir = Path(args.output_dir)
    mixed_precision = args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and not args.cpu else "no"
    trackers = None if args.report_to == "none" else args.report_to
    if trackers == "all" and not available_trackers():  # nothing to log to: no warning on every run
        trackers = None
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=mixed_precision, log_with=trackers, project_dir=str(output_dir),
                              gradient_accumulation_steps=args.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
    set_seed(args.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = output_dir / "checkpoints"
    if accelerator.is_main_process:  # this process owns the folder (run.lock): what a killed save left is ours
        for leftover in remove_leftovers(output_dir) + remove_leftovers(checkpoints):
            accelerator.print(f"removed {leftover}, left by an interrupted save")
    accelerator.wait_for_everyone()
    splits, metadata = load_data(args, accelerator)
    selection = check_task_options(args, metadata)
    weights = class_weights(args, splits["train"], metadata.num_labels)
    state = RunState(settings=run_settings(args, accelerator, selection))
    resume_from = intact_checkpoint(checkpoints, accelerator) if args.resume else None
    if args.resume and resume_from is None:
        accelerator.print(f"--resume: no checkpoint in {checkpoints}; starting from scratch")
    if not args.resume and accelerator.is_main_process and latest_checkpoint(checkpoints) is not None:
        raise earlier_run_error(checkpoints, state.settings)
    if resume_from is not None:
        recorded = RunState(**json.loads((resume_from / "run_state.json").read_text()))
        changes = changed_settings(recorded.settings, state.settings)
        if changes:
            raise ValueError(f"--resume from {resume_from}: the run was started with other settings: "
                             f"{'; '.join(changes)}. Resume with the run's settings, or start a new run in another "
                             f"--output_dir (only {', '.join(RESUMABLE_CHANGES[1:])} may change on resume).")
        state = recorded

    loaded = load_or_estimate_rus(args, splits, metadata, accelerator)
    sidecar = loaded.ablated(args.rus_ablation, args.seed) if loaded is not None else None
    model = build_model(args, metadata, sidecar)
    collator = MultimodalCollator(metadata.modality_names, problem_type=model.config.problem_type)
    per_process_batch = max(1, args.batch_size // accelerator.num_processes)
    train_loader = make_loader(splits["train"], collator, per_process_batch, shuffle=True, seed=args.seed)
    val_loader = make_loader(splits["validation"], collator, per_process_batch, shuffle=False, seed=args.seed)
    test_loader = make_loader(splits["test"], collator, per_process_batch, shuffle=False, seed=args.seed)

    batches_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)  # forward passes per process
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)  # optimizer steps
    total_steps = steps_per_epoch * args.num_epochs if args.max_steps < 0 else min(args.max_steps, steps_per_epoch * args.num_epochs)
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, val_loader, test_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, test_loader, scheduler)

    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} (epoch {state.epoch}, step {state.global_step})")
    if accelerator.is_main_process:
        accelerator.init_trackers("merge", config={k: str(v) for k, v in asdict(args).items()})
    log = MetricsLog(output_dir / "metrics.jsonl")
    if accelerator.is_main_process:
        log.rewind(state.global_step)
    best_dir = output_dir / "best_model"

    while state.epoch < args.num_epochs and state.global_step < total_steps and not patience_spent(args, state):
        model.train()
        train_loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(train_loader, state.step_in_epoch) if state.step_in_epoch else train_loader
        progress = tqdm(batches, desc=f"epoch {state.epoch + 1}/{args.num_epochs}", initial=state.step_in_epoch,
                        total=batches_per_epoch, disable=not accelerator.is_local_main_process)
        accumulated = []  # this optimizer step's forward passes: (loss, aux loss)
        for batch in progress:
            with accelerator.accumulate(model):  # gradients are synchronised and applied every N passes / at epoch end
                outputs = model(**batch)
                loss = training_loss(outputs, batch["labels"], weights)
                if not torch.isfinite(accelerator.reduce(loss.detach(), reduction="mean")):
                    last_good = drop_checkpoints_from(checkpoints, state.global_step, delete=accelerator.is_main_process)
                    raise NonFiniteLossError(
                        f"the training loss became {loss.item()} at epoch {state.epoch + 1}, step {state.global_step + 1} "
                        f"(computed from the weights after step {state.global_step}); stopped, and removed any checkpoint "
                        f"of those weights. Last good checkpoint (finite weights and loss): {last_good or 'none'}; best "
                        f"model: {best_dir if best_dir.exists() else 'none yet'}. Lower --learning_rate in a new "
                        "--output_dir, or check the inputs.")
                if accelerator.is_main_process:  # the newest checkpoint's weights just gave a finite loss: prune older
                    prune_checkpoints(checkpoints, args.keep_checkpoints)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()  # Accelerate's optimizer and scheduler act only when the gradients are synchronised
                scheduler.step()
                optimizer.zero_grad()
            state.step_in_epoch += 1
            accumulated.append((loss.item(), outputs.aux_loss.item() if outputs.aux_loss is not None else 0.0))
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            record = {"step": state.global_step, "epoch": state.epoch + 1,
                      "loss": float(np.mean([pass_loss for pass_loss, _ in accumulated])),
                      "aux_loss": float(np.mean([aux for _, aux in accumulated])), "lr": scheduler.get_last_lr()[0]}
            accumulated = []
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if accelerator.is_main_process:
                log.write(split="train", **record)
            accelerator.log({"train/loss": record["loss"], "train/aux_loss": record["aux_loss"]}, step=state.global_step)
            if args.checkpoint_every_steps and state.global_step % args.checkpoint_every_steps == 0:
                save_run_state(accelerator, checkpoints, state)
            if state.global_step >= total_steps:
                break

        metrics, _, _ = evaluate_model(model, val_loader, accelerator)
        state.epoch += 1
        state.step_in_epoch = 0
        score = selection.score(metrics)
        accelerator.print(f"epoch {state.epoch}: validation " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("routing_")))
        for line in (routing_summary(metrics), routing_balance_warning(metrics)):
            if line:
                accelerator.print(f"  {line}" if line.startswith("routing:") else f"  WARNING: {line}")
        if accelerator.is_main_process:
            log.write(split="validation", epoch=state.epoch, step=state.global_step, **metrics)
        accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=state.global_step)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.best_metrics = score, state.epoch, metrics
            if accelerator.is_main_process:
                with atomic_directory(best_dir) as temporary:  # fsync'ed, under the user's umask
                    accelerator.unwrap_model(model).save_pretrained(temporary)
                    MergeProcessor.from_dataset_metadata(metadata).save_pretrained(temporary)  # raw data → model input
            accelerator.wait_for_everyone()
        save_run_state(accelerator, checkpoints, state)

    if accelerator.is_main_process:
        prune_checkpoints(checkpoints, args.keep_checkpoints)
    return finish(args, accelerator, model, test_loader, splits, metadata, sidecar, state, log, loaded.content_hash() if loaded else None,
                  selection)


def finish(args, accelerator, model, test_loader, splits, metadata, sidecar, state, log, sidecar_hash: str | None,
           selection: Selection) -> dict:
    """Evaluate the best checkpoint on test, write results.json and the figures, print the results table.
    ``sidecar_hash``: the content hash of the sidecar file the run loaded (push_to_hub.py checks the file); None
    (and ``sidecar`` None) when the router does not read RUS and none was estimated."""
    output_dir = Path(args.output_dir)
    head = type(accelerator.unwrap_model(model))
    best = head.from_pretrained(output_dir / "best_model")
    check_modalities_match(best.config.modalities, metadata.modalities, f"checkpoint {output_dir / 'best_model'}")
    accelerator.unwrap_model(model).load_state_dict(best.state_dict())
    test_metrics, _, _ = evaluate_model(model, test_loader, accelerator)
    results = {"dataset": args.dataset if not args.hub_dataset else args.hub_dataset,
               "dataset_options": json_option(args, "dataset_options"), "data_dir": args.data_dir, "seed": args.seed,
               "router_type": args.router_type, "disabled_aux_losses": list(args.disable_aux_loss),
               "rus_ablation": args.rus_ablation, "num_rus_lags": args.num_rus_lags,
               "best_epoch": state.best_epoch, "epochs_trained": state.epoch,
               "stopped_early": patience_spent(args, state), "selection_metric": selection.metric,
               "selection_higher_is_better": selection.higher_is_better, "head": head.__name__,
               "problem_type": best.config.problem_type, "label_granularity": metadata.label_granularity,
               "recipe": {name: getattr(args, name) for name in ("num_epochs", "batch_size", "learning_rate",
                                                                 "weight_decay", "warmup_ratio", "class_weighting",
                                                                 "early_stopping_patience", "max_grad_norm")},
               "validation": state.best_metrics, "test": test_metrics,
               "baseline": dict(zip(("name", "test"), baseline_metrics(splits, metadata, best.config.problem_type))),
               "dataset_metadata": {"name": metadata.name, "protocol": metadata.protocol,
                                    "label_names": metadata.label_names, "modalities": metadata.modalities,
                                    "problem_type": metadata.problem_type,
                                    "label_granularity": metadata.label_granularity},
               "rus_metadata": sidecar.metadata if sidecar else None, "steps": state.global_step, "num_processes": accelerator.num_processes}
    if accelerator.is_main_process:
        log.write(split="test", step=state.global_step, **test_metrics)
        accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)
        collator = MultimodalCollator(metadata.modality_names, problem_type=best.config.problem_type)
        main_loader = make_loader(splits["test"], collator, args.batch_size, False, args.seed)
        figures = interpretation_figures(best, main_loader, output_dir, sidecar.metadata.get("lags_seconds") if sidecar else None,
                                         title=f"{metadata.name}, router {args.router_type}, seed {args.seed} (test split)")
        results["rus"] = rus_summary(sidecar, splits, metadata.name) if sidecar else {}
        sidecar_path = str(args.rus_sidecar or output_dir / "rus.safetensors") if sidecar else None
        results["artifacts"] = {"best_model": str(output_dir / "best_model"), "rus_sidecar": sidecar_path,
                                "rus_sidecar_hash": sidecar_hash,
                                "metrics_log": str(log.path), "figures": [str(path) for path in figures],
                                "checkpoints": str(output_dir / "checkpoints")}
        atomic_write(output_dir / "results.json", json.dumps(results, indent=2))
        print_results(results, metadata)
    # every process leaves together: a gloo process group whose peer has exited hangs in its destructor
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def rus_summary(sidecar: RusSidecar, splits, metadata_name: str) -> dict:
    """The strongest estimated pair per RUS kind (pair and lag, bits), beside the planted structure when the
    dataset carries one (the synthetic benchmark)."""
    names = sidecar.metadata["modality_names"]
    summary = {}
    for kind in ("redundancy", "synergy", "uniqueness"):
        values = getattr(sidecar, kind).numpy()
        i, j, lag = np.unravel_index(int(np.argmax(values)), values.shape)
        summary[f"estimated_top_{kind}"] = {"pair": [names[i], names[j]], "lag": int(lag), "bits": float(values[i, j, lag])}
    if metadata_name == "synthetic":
        planted = planted_structure(splits)
        summary["planted"] = {key: planted[key] for key in ("unique", "synergistic", "redundant", "noise", "information_bits")}
        summary["planted_estimates"] = planted_estimates(sidecar, planted)
    return summary


def planted_estimates(sidecar: RusSidecar, planted: dict) -> list[dict]:
    """For every planted cell, the estimate there and its rank among all cells of its kind (1 = strongest):
    redundancy / synergy of the planted pair at its lag among all pairs i < j and lags; uniqueness of a planted
    unique modality at its lag (U_m = max over partners) among all modalities and lags."""
    names = list(sidecar.metadata["modality_names"])
    num_lags = sidecar.redundancy.shape[2]
    upper = np.triu_indices(len(names), k=1)
    rows = []
    for kind, key in (("redundancy", "redundant"), ("synergy", "synergistic")):
        (first, second), lag = planted[key]["pair"], planted[key]["lag"]
        values = getattr(sidecar, kind).numpy()
        bits = float(values[names.index(first), names.index(second), lag]) if lag < num_lags else float("nan")
        rank = int((values[upper] > bits).sum()) + 1
        rows.append({"kind": kind, "cell": f"{first}–{second} at lag {lag}", "bits": bits, "rank": rank,
                     "of": int(values[upper].size)})
    per_modality = per_modality_uniqueness(sidecar.uniqueness).numpy()
    for name, lag in planted["unique"].items():
        bits = float(per_modality[names.index(name), lag]) if lag < num_lags else float("nan")
        rows.append({"kind": "uniqueness", "cell": f"{name} at lag {lag}", "bits": bits,
                     "rank": int((per_modality > bits).sum()) + 1, "of": int(per_modality.size)})
    return rows


def print_results(results: dict, metadata) -> None:
    rows = [("test " + name, f"{value:.4f}") for name, value in results["test"].items() if not name.startswith("routing_")]
    baseline = results["baseline"]
    rows.append((f"test {baseline['name']}", ", ".join(f"{name} {value:.4f}" for name, value in baseline["test"].items())))
    rows.append(("best epoch", f"{results['best_epoch']} (validation {results['selection_metric']}, "
                               f"{'higher' if results['selection_higher_is_better'] else 'lower'} is better)"))
    for line in (routing_summary(results["test"]), routing_balance_warning(results["test"])):
        if line:
            rows.append(("test routing", line.removeprefix("routing: ")) if line.startswith("routing:") else ("WARNING", line))
    for kind, found in results["rus"].items():
        if kind.startswith("estimated_top_"):
            rows.append((kind.replace("_", " "), f"{found['pair'][0]}–{found['pair'][1]} at lag {found['lag']} "
                                                 f"({found['bits']:.3f} bits)"))
    for planted in results["rus"].get("planted_estimates", []):
        rows.append((f"planted {planted['kind']}", f"{planted['cell']}: estimated {planted['bits']:.3f} bits, rank "
                                                   f"{planted['rank']} of {planted['of']} cells"))
    width = max(len(name) for name, _ in rows)
    task = "regression" if results["problem_type"] == "regression" else f"{metadata.label_granularity} classification"
    print(f"\nResults — {metadata.name} ({task}, {results['head']}), router {results['router_type']}, "
          f"seed {results['seed']}")
    print("\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows))
    print("\nArtifacts:")
    for name, path in results["artifacts"].items():
        print(f"  {name}: {path}")


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments and train; the first process owns ``--output_dir`` for the run (``run.lock``)."""
    (args,) = HfArgumentParser(TrainArguments).parse_args_into_dataclasses(args=argv)
    check_arguments(args)
    if os.environ.get("RANK", "0") != "0":  # the other processes of a distributed launch
        return train(args)
    with exclusive_lock(Path(args.output_dir) / "run.lock", f"output directory {args.output_dir}"):
        return train(args)


if __name__ == "__main__":
    main()
