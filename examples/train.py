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
    python examples/train.py --resume                                # continue a killed run in --output_dir
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/train.py   # 2-process DDP (gloo)

Artifacts under ``--output_dir``: ``rus.safetensors`` (unless ``--rus_sidecar`` points elsewhere),
``checkpoints/checkpoint-<step>`` (``accelerator.save_state``, every epoch), ``best_model/`` (``save_pretrained``),
``metrics.jsonl``, ``results.json``, ``routing.png`` and ``temporal_rus.png``; ``run.lock`` while the run lasts: one
run at a time per folder, and per sidecar path while it is estimated (``<sidecar>.lock``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_cosine_schedule_with_warmup

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataset_builders  # noqa: E402
from dataset_builders.synthetic import planted_structure  # noqa: E402
from modeling_merge.configuration_merge import MergeConfig  # noqa: E402
from modeling_merge.hub import write_text_atomic  # noqa: E402
from modeling_merge.modeling_merge import MergeForSequenceClassification  # noqa: E402
from modeling_merge.processing_merge import MergeProcessor  # noqa: E402
from modeling_merge.rus import (  # noqa: E402
    BatchConfig,
    RusSidecar,
    arrays_from_dataset,
    estimate_temporal_rus,
    fingerprint_arrays,
    pool_to_grid,
)
from modeling_merge.training import (  # noqa: E402
    MetricsLog,
    MultimodalCollator,
    atomic_directory,
    changed_settings,
    check_modalities_match,
    drop_checkpoints_from,
    evaluate_model,
    exclusive_lock,
    interpretation_figures,
    latest_checkpoint,
    prune_checkpoints,
    routing_balance_warning,
    routing_summary,
)

AUX_LOSSES = ("redundancy", "uniqueness", "synergy", "load_balance")
SELECTION_METRICS = ("accuracy", "macro_f1", "roc_auc", "average_precision")  # average_precision: binary tasks
RESUMABLE_CHANGES = ("resume", "output_dir", "report_to", "checkpoint_every_steps", "keep_checkpoints",
                     "dataset_cache_dir")  # output_dir: a run folder may be moved
RUS_ABLATIONS = ("none", "zeros", "noise", "shuffled")
CLASS_WEIGHTINGS = ("none", "balanced")


@dataclass
class TrainArguments:
    """Command-line options (`--name value`); every one has a default, so no config file is needed."""

    dataset: str = field(default="synthetic", metadata={"help": "builder name: synthetic, wesad_e4, physionet2012, pamap2, ..."})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the benchmark's raw files (not for synthetic)"})
    dataset_options: str = field(default="{}", metadata={"help": "JSON of builder config fields, e.g. '{\"window\": 50}'"})
    hub_dataset: str | None = field(default=None, metadata={"help": "Hub dataset repo or exported folder (dataset_builders.publish) "
                                                                     "instead of a builder"})
    output_dir: str = field(default="outputs/main_job", metadata={"help": "where checkpoints, logs and figures go"})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "where the built dataset is cached (default "
                                                                          "<output_dir>/cache); runs may share one"})
    rus_sidecar: str | None = field(default=None, metadata={"help": "RUS sidecar to load; estimated and cached there if absent "
                                                                    "(default: <output_dir>/rus.safetensors)"})
    rus_estimator: str = field(default="multiscale_batch", metadata={"help": "multiscale_batch, stepwise_batch or quantized_exact"})
    num_rus_lags: int = field(default=4, metadata={"help": "L, lags of the temporal RUS"})
    rus_ablation: str = field(default="none", metadata={
        "help": "replace the loaded RUS (paper Fig. 14): none, zeros, noise (uniform, each kind's mean kept) or "
                "shuffled (each kind's values permuted over modality pairs and lags)"})
    router_type: str = field(default="rus", metadata={"help": "rus (MERGE), softmax, laplace (FuseMoE), laplace_per_modality, dense"})
    disable_aux_loss: list[str] = field(default_factory=list, metadata={"help": f"auxiliary losses to switch off: {AUX_LOSSES}"})
    model_options: str = field(default='{"d_model": 32, "num_blocks": 2, "num_moe_blocks": 2, "num_encoder_layers": 1, '
                                        '"ffn_dim": 64, "expert_hidden_dim": 64, "num_attention_heads": 4}',
                               metadata={"help": "JSON of MergeConfig fields (the default is a small model for CPU)"})
    num_epochs: int = field(default=6, metadata={"help": "training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: no limit)"})
    batch_size: int = field(default=32, metadata={"help": "global batch size (split over processes)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW decoupled weight decay, applied to weight matrices "
                                                                "only (never to biases or normalisation weights)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of the optimizer steps spent in linear warmup, "
                                                                "then cosine decay"})
    class_weighting: str = field(default="none", metadata={
        "help": "none, or balanced: the cross-entropy weights class c by N / (C * N_c), counted on the training split "
                "(for imbalanced tasks such as PhysioNet's 14 %% positive)"})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "stop once the selection metric has not improved for this many epochs (0: train all --num_epochs)"})
    selection_metric: str = field(default="macro_f1", metadata={"help": "validation metric that picks the best checkpoint"})
    seed: int = 0
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir/checkpoints; "
                                                          "every other setting must be the run's, except "
                                                          "output_dir (a moved run), report_to, checkpoint_every_steps, "
                                                          "keep_checkpoints and dataset_cache_dir"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "also save state every N steps (0: only at epoch ends)"})
    keep_checkpoints: int = 2
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, none on CPU), no, fp16, bf16"})
    cpu: bool = field(default=False, metadata={"help": "train on CPU even if a GPU is present"})
    report_to: str = field(default="all", metadata={"help": "Accelerate trackers (all = those installed, none = off)"})
    limit_examples: int = field(default=0, metadata={"help": "use only the first N examples of each split (0: all)"})


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


def run_settings(args: TrainArguments, accelerator: Accelerator) -> dict:
    """The settings a resumed run must share with the run it continues: every argument but `RESUMABLE_CHANGES`
    (JSON options parsed, so each field is compared by name) and the process count."""
    settings = {name: value for name, value in asdict(args).items() if name not in RESUMABLE_CHANGES}
    settings.update(dataset_options=json_option(args, "dataset_options"), model_options=json_option(args, "model_options"),
                    num_processes=accelerator.num_processes)
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


def grid_arrays(split, metadata) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
    """A split's modalities pooled onto the common token grid, name → (N, T, C_m), its labels (N,) and its
    (N, M) presence mask (None when every modality is always present)."""
    modalities, labels, mask = arrays_from_dataset(split, metadata.modality_names)
    pooled = {name: pool_to_grid(values, metadata.patch_sizes[name], name) for name, values in modalities.items()}
    return pooled, labels, mask


def load_or_estimate_rus(args: TrainArguments, splits, metadata, accelerator: Accelerator) -> RusSidecar:
    """The training split's RUS sidecar: loaded and checked against the data when the file exists, otherwise
    estimated on the main process (class-balanced, resumable through a partial-results file) and cached
    atomically for the next run."""
    path = Path(args.rus_sidecar or Path(args.output_dir) / "rus.safetensors")
    modalities, labels, mask = grid_arrays(splits["train"], metadata)
    if accelerator.is_main_process and not path.exists():
        with exclusive_lock(path.with_name(path.name + ".lock"), f"RUS sidecar {path} (being estimated)"):
            if not path.exists():  # another run may have written it while we built the data
                accelerator.print(f"estimating temporal RUS ({args.rus_estimator}, {args.num_rus_lags} lags) on the "
                                  "training split")
                estimate_temporal_rus(
                    modalities, labels, num_lags=args.num_rus_lags, estimator=args.rus_estimator,
                    config=BatchConfig(seed=args.seed), modality_mask=mask,
                    lags_seconds=[lag / metadata.token_grid_hz for lag in range(args.num_rus_lags)],
                    partial_path=str(path.with_name(path.name + ".partial")), output=path)
    accelerator.wait_for_everyone()
    sidecar = RusSidecar.load(path)
    sidecar.validate(modality_names=metadata.modality_names, num_lags=args.num_rus_lags,
                     fingerprint=fingerprint_arrays(modalities, labels))
    return sidecar


def ablate_rus(sidecar: RusSidecar, ablation: str, seed: int) -> RusSidecar:
    """The sidecar with its RUS replaced for an ablation (paper Fig. 14): ``zeros``; ``noise``, uniform on
    [0, 2·mean] per kind (mean over the off-diagonal entries, so the scale is kept); ``shuffled``, each kind's
    off-diagonal values permuted over pairs and lags. R and S stay symmetric, the diagonal zero; ``none``
    returns the sidecar unchanged. Seeded by ``seed``; the metadata records the ablation."""
    if ablation not in RUS_ABLATIONS:
        raise ValueError(f"--rus_ablation got {ablation!r}; choose from {RUS_ABLATIONS}")
    if ablation == "none":
        return sidecar
    generator = torch.Generator().manual_seed(seed)
    num_modalities, num_lags = sidecar.num_modalities, sidecar.num_lags
    tables = {}
    for kind in ("redundancy", "uniqueness", "synergy"):
        symmetric = kind != "uniqueness"
        rows, cols = (torch.triu_indices(num_modalities, num_modalities, offset=1) if symmetric
                      else torch.nonzero(~torch.eye(num_modalities, dtype=torch.bool)).T)
        values = getattr(sidecar, kind)[rows, cols]  # (pairs, L)
        if ablation == "zeros":
            values = torch.zeros_like(values)
        elif ablation == "noise":
            scale = float(values.mean()) if values.numel() and float(values.mean()) > 0 else 1.0
            values = 2 * scale * torch.rand(values.shape, generator=generator)
        else:
            values = values.reshape(-1)[torch.randperm(values.numel(), generator=generator)].reshape(values.shape)
        table = torch.zeros(num_modalities, num_modalities, num_lags)
        table[rows, cols] = values
        if symmetric:
            table[cols, rows] = values
        tables[kind] = table
    return RusSidecar(**tables, metadata={**sidecar.metadata, "rus_ablation": ablation})


def build_model(args: TrainArguments, metadata, sidecar: RusSidecar) -> MergeForSequenceClassification:
    unknown = sorted(set(args.disable_aux_loss) - set(AUX_LOSSES))
    if unknown:
        raise ValueError(f"--disable_aux_loss got {unknown}; choose from {AUX_LOSSES}")
    options = json_option(args, "model_options")
    options.update({f"{name}_loss_weight": 0.0 for name in args.disable_aux_loss})
    config = MergeConfig(**metadata.merge_config_kwargs(), num_rus_lags=args.num_rus_lags, router_type=args.router_type,
                         **options)
    model = MergeForSequenceClassification(config)
    sidecar.apply_to(model)
    return model


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices and embeddings (parameters with ≥ 2 dims), none on biases and
    normalisation weights (1-dim), the usual rule (nanoGPT, BERT)."""
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return [{"params": [p for p in trained if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}]


def class_weights(args: TrainArguments, train_split, num_labels: int) -> torch.Tensor | None:
    """``--class_weighting balanced``: weight N / (C · N_c) per class c from the training split's labels, (C,)
    float32; None for ``none``. A class absent from the training split is an error (its weight is undefined)."""
    if args.class_weighting == "none":
        return None
    counts = np.bincount(np.asarray(train_split["label"], dtype=np.int64), minlength=num_labels)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"--class_weighting balanced: class id(s) {missing} never occur in the training split, so "
                         "their weight is undefined; use --class_weighting none or another split")
    return torch.tensor(counts.sum() / (num_labels * counts), dtype=torch.float32)


def training_loss(outputs, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The model's own loss (cross-entropy + auxiliary routing losses), or with ``weights`` (C,) the class-weighted
    cross-entropy in its place (the auxiliary losses kept)."""
    if weights is None:
        return outputs.loss
    cross_entropy = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weights.to(labels.device))
    return cross_entropy + (outputs.aux_loss if outputs.aux_loss is not None else 0.0)


def make_loader(split, collator, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(split.with_format("numpy"), batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      generator=generator, drop_last=False)


def patience_spent(args: TrainArguments, state: RunState) -> bool:
    """Early stopping: the selection metric has not improved for ``--early_stopping_patience`` epochs."""
    return args.early_stopping_patience > 0 and state.best_epoch > 0 and \
        state.epoch - state.best_epoch >= args.early_stopping_patience


def save_run_state(accelerator: Accelerator, checkpoints: Path, state: RunState) -> None:
    """`accelerator.save_state` (every rank writes its RNG state) plus the run state into a partial folder that
    is renamed to ``checkpoint-<global step>`` only once complete, so a kill mid-write loses nothing. Older
    checkpoints are pruned only once this one's weights have given a finite loss (or the run has ended)."""
    target = checkpoints / f"checkpoint-{state.global_step}"
    partial = checkpoints / f".checkpoint-{state.global_step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_text_atomic(partial / "run_state.json", json.dumps(asdict(state)))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    accelerator.wait_for_everyone()


def train(args: TrainArguments) -> dict:
    if args.selection_metric not in SELECTION_METRICS:
        raise ValueError(f"unknown --selection_metric {args.selection_metric!r}; choose one of {SELECTION_METRICS}")
    if args.class_weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"unknown --class_weighting {args.class_weighting!r}; choose one of {CLASS_WEIGHTINGS}")
    if args.early_stopping_patience < 0:
        raise ValueError(f"--early_stopping_patience must be ≥ 0 (0: off), got {args.early_stopping_patience}")
    output_dir = Path(args.output_dir)
    mixed_precision = args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and not args.cpu else "no"
    trackers = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=mixed_precision, log_with=trackers, project_dir=str(output_dir),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed))
    set_seed(args.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = output_dir / "checkpoints"
    resume_from = latest_checkpoint(checkpoints) if args.resume else None
    if args.resume and resume_from is None:
        accelerator.print(f"--resume: no checkpoint in {checkpoints}; starting from scratch")
    if not args.resume and accelerator.is_main_process and latest_checkpoint(checkpoints) is not None:
        raise FileExistsError(f"{checkpoints} holds checkpoints of an earlier run; pass --resume to continue it "
                              "or choose another --output_dir")
    state = RunState(settings=run_settings(args, accelerator))
    if resume_from is not None:
        recorded = RunState(**json.loads((resume_from / "run_state.json").read_text()))
        changes = changed_settings(recorded.settings, state.settings)
        if changes:
            raise ValueError(f"--resume from {resume_from}: the run was started with other settings: "
                             f"{'; '.join(changes)}. Resume with the run's settings, or start a new run in another "
                             f"--output_dir (only {', '.join(RESUMABLE_CHANGES[1:])} may change on resume).")
        state = recorded

    splits, metadata = load_data(args, accelerator)
    loaded = load_or_estimate_rus(args, splits, metadata, accelerator)
    sidecar = ablate_rus(loaded, args.rus_ablation, args.seed)
    model = build_model(args, metadata, sidecar)
    collator = MultimodalCollator(metadata.modality_names)
    per_process_batch = max(1, args.batch_size // accelerator.num_processes)
    train_loader = make_loader(splits["train"], collator, per_process_batch, shuffle=True, seed=args.seed)
    val_loader = make_loader(splits["validation"], collator, per_process_batch, shuffle=False, seed=args.seed)
    test_loader = make_loader(splits["test"], collator, per_process_batch, shuffle=False, seed=args.seed)

    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
    total_steps = steps_per_epoch * args.num_epochs if args.max_steps < 0 else min(args.max_steps, steps_per_epoch * args.num_epochs)
    weights = class_weights(args, splits["train"], model.config.num_labels)
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
                        total=steps_per_epoch, disable=not accelerator.is_local_main_process)
        for batch in progress:
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
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            state.step_in_epoch += 1
            state.global_step += 1
            record = {"step": state.global_step, "epoch": state.epoch + 1, "loss": loss.item(),
                      "aux_loss": outputs.aux_loss.item() if outputs.aux_loss is not None else 0.0,
                      "lr": scheduler.get_last_lr()[0]}
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
        score = metrics[args.selection_metric]
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
                with atomic_directory(best_dir) as temporary:
                    accelerator.unwrap_model(model).save_pretrained(temporary)
                    MergeProcessor.from_dataset_metadata(metadata).save_pretrained(temporary)  # raw data → model input
            accelerator.wait_for_everyone()
        save_run_state(accelerator, checkpoints, state)

    if accelerator.is_main_process:
        prune_checkpoints(checkpoints, args.keep_checkpoints)
    return finish(args, accelerator, model, test_loader, splits, metadata, sidecar, state, log, loaded.content_hash())


def finish(args, accelerator, model, test_loader, splits, metadata, sidecar, state, log, sidecar_hash: str) -> dict:
    """Evaluate the best checkpoint on test, write results.json and the figures, print the results table.
    ``sidecar_hash``: the content hash of the sidecar file the run loaded (push_to_hub.py checks the file)."""
    output_dir = Path(args.output_dir)
    best = MergeForSequenceClassification.from_pretrained(output_dir / "best_model")
    check_modalities_match(best.config.modalities, metadata.modalities, f"checkpoint {output_dir / 'best_model'}")
    accelerator.unwrap_model(model).load_state_dict(best.state_dict())
    test_metrics, _, _ = evaluate_model(model, test_loader, accelerator)
    results = {"dataset": args.dataset if not args.hub_dataset else args.hub_dataset,
               "dataset_options": json_option(args, "dataset_options"), "data_dir": args.data_dir, "seed": args.seed,
               "router_type": args.router_type, "disabled_aux_losses": list(args.disable_aux_loss),
               "rus_ablation": args.rus_ablation, "num_rus_lags": args.num_rus_lags,
               "best_epoch": state.best_epoch, "epochs_trained": state.epoch,
               "stopped_early": patience_spent(args, state), "selection_metric": args.selection_metric,
               "recipe": {name: getattr(args, name) for name in ("num_epochs", "batch_size", "learning_rate",
                                                                 "weight_decay", "warmup_ratio", "class_weighting",
                                                                 "early_stopping_patience", "max_grad_norm")},
               "validation": state.best_metrics, "test": test_metrics,
               "dataset_metadata": {"name": metadata.name, "protocol": metadata.protocol,
                                    "label_names": metadata.label_names, "modalities": metadata.modalities},
               "rus_metadata": sidecar.metadata, "steps": state.global_step, "num_processes": accelerator.num_processes}
    if accelerator.is_main_process:
        log.write(split="test", step=state.global_step, **test_metrics)
        accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)
        main_loader = make_loader(splits["test"], MultimodalCollator(metadata.modality_names), args.batch_size, False, args.seed)
        figures = interpretation_figures(best, main_loader, output_dir, sidecar.metadata.get("lags_seconds"),
                                         title=f"{metadata.name}, router {args.router_type}, seed {args.seed} (test split)")
        results["rus"] = rus_summary(sidecar, splits, metadata.name)
        results["artifacts"] = {"best_model": str(output_dir / "best_model"), "rus_sidecar": str(args.rus_sidecar or output_dir / "rus.safetensors"),
                                "rus_sidecar_hash": sidecar_hash,
                                "metrics_log": str(log.path), "figures": [str(path) for path in figures],
                                "checkpoints": str(output_dir / "checkpoints")}
        write_text_atomic(output_dir / "results.json", json.dumps(results, indent=2))
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
    return summary


def print_results(results: dict, metadata) -> None:
    rows = [("test " + name, f"{value:.4f}") for name, value in results["test"].items() if not name.startswith("routing_")]
    rows.append(("best epoch", str(results["best_epoch"])))
    for line in (routing_summary(results["test"]), routing_balance_warning(results["test"])):
        if line:
            rows.append(("test routing", line.removeprefix("routing: ")) if line.startswith("routing:") else ("WARNING", line))
    for kind, found in results["rus"].items():
        if kind.startswith("estimated_top_"):
            rows.append((kind.replace("_", " "), f"{found['pair'][0]}–{found['pair'][1]} at lag {found['lag']} "
                                                 f"({found['bits']:.3f} bits)"))
    planted = results["rus"].get("planted")
    if planted:
        rows.append(("planted redundancy", f"{'–'.join(planted['redundant']['pair'])} at lag {planted['redundant']['lag']}"))
        rows.append(("planted synergy", f"{'–'.join(planted['synergistic']['pair'])} at lag {planted['synergistic']['lag']}"))
        rows.append(("planted uniqueness", ", ".join(f"{name} at lag {lag}" for name, lag in planted["unique"].items())))
    width = max(len(name) for name, _ in rows)
    print(f"\nResults — {metadata.name}, router {results['router_type']}, seed {results['seed']}")
    print("\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows))
    print("\nArtifacts:")
    for name, path in results["artifacts"].items():
        print(f"  {name}: {path}")


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments and train; the first process owns ``--output_dir`` for the run (``run.lock``)."""
    (args,) = HfArgumentParser(TrainArguments).parse_args_into_dataclasses(args=argv)
    if os.environ.get("RANK", "0") != "0":  # the other processes of a distributed launch
        return train(args)
    with exclusive_lock(Path(args.output_dir) / "run.lock", f"output directory {args.output_dir}"):
        return train(args)


if __name__ == "__main__":
    main()
