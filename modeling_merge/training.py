"""Training helpers shared by `examples/train.py` and the Hugging Face `Trainer`.

* :class:`MultimodalCollator` turns dataset rows (one array per modality, ``label``, optional
  ``modality_mask``) into the model's batch: ``{"modalities": {name: (B, T_m, C_m) float32},
  "modality_mask": (B, M) bool, "labels": (B,) int64}`` (or (B, T) per-step class ids, or float targets for
  multi-label and regression models).
* :func:`task_metrics` / :func:`compute_metrics`: the metrics of each problem type. Classification
  (:func:`classification_metrics`): accuracy, macro-F1 and AUROC (binary, or one-vs-rest averaged over classes)
  through the local ``evaluate`` modules in ``modeling_merge/metrics``, which load offline; binary tasks also get
  the average precision (AUPRC, sklearn). Per-step classification (:func:`per_step_metrics`): the same over the
  labelled steps. Multi-label (:func:`multi_label_metrics`): macro-F1 and macro AUROC. Regression
  (:func:`regression_metrics`): MAE, RMSE, R².
* :func:`merge_training_arguments`: ``TrainingArguments`` with the settings a dict-of-modalities batch needs;
  :func:`parameter_groups`: AdamW groups with weight decay on weight matrices only.
* Run bookkeeping for a resumable training loop: :func:`latest_checkpoint`, :func:`drop_checkpoints_from`,
  :func:`changed_settings`, :class:`MetricsLog`, :func:`check_modalities_match`; ``atomic_directory`` and
  ``exclusive_lock`` are the ones of :mod:`modeling_merge.files`, importable from here too.

Using ``Trainer``::

    args = merge_training_arguments("runs/merge", num_train_epochs=5, learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=ds["train"], eval_dataset=ds["validation"],
                      data_collator=MultimodalCollator(list(model.config.modalities)),
                      compute_metrics=compute_metrics)
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_directory, atomic_write, exclusive_lock  # noqa: F401 (atomic_directory, exclusive_lock: re-exported)
from .modeling_merge import routing_alignment_counts

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
METRIC_NAMES = ("accuracy", "macro_f1", "roc_auc")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
IGNORE_INDEX = -100
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class MultimodalCollator:
    """Stack rows of a multimodal dataset into one model batch.

    ``modality_names``: the model's modalities in config order. Every row must hold each of them as an
    array (T_m, C_m) of the same shape across the batch. A row's optional ``modality_mask`` (M booleans, config
    order) marks absent modalities; without that column every modality is present (the batch always carries
    ``modality_mask``, the model's ``main_input_name``). Non-finite values in a present modality are refused with an
    error naming the modality and the row, so they never reach the loss as silent NaN; an absent one may hold
    anything (the model zeroes it).

    ``label_column`` holds, per ``problem_type`` (the model config's): ``single_label_classification`` one class id
    per row → ``labels`` (B,) int64, or one class id per token-grid step (a (T,) list, -100 = unlabelled) → (B, T)
    int64 for ``MergeForTokenClassification``; ``multi_label_classification`` one 0/1 value per class → (B, C)
    float32; ``regression`` one number (or one per output) per row → (B,) or (B, C) float32. A class id that is not
    a whole number is refused, never truncated.
    """

    modality_names: Sequence[str]
    label_column: str = "label"
    mask_column: str = "modality_mask"
    problem_type: str | None = "single_label_classification"

    def __post_init__(self) -> None:
        self.problem_type = self.problem_type or "single_label_classification"
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"MultimodalCollator.problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError("MultimodalCollator got an empty batch")
        expected = (len(rows), len(self.modality_names))
        if self.mask_column in rows[0]:
            mask = torch.as_tensor(np.asarray([row[self.mask_column] for row in rows], dtype=bool))
            if mask.shape != expected:
                raise ValueError(
                    f"column '{self.mask_column}' has shape {tuple(mask.shape)}, expected {expected} for "
                    f"modalities {list(self.modality_names)}"
                )
        else:
            mask = torch.ones(expected, dtype=torch.bool)
        batch: dict[str, Any] = {
            "modalities": {name: self._stack(rows, name, mask[:, index]) for index, name in
                           enumerate(self.modality_names)},
            "modality_mask": mask,
        }
        if self.label_column in rows[0]:
            batch["labels"] = self._labels(rows)
        return batch

    def _labels(self, rows: list[Mapping[str, Any]]) -> torch.Tensor:
        try:
            labels = np.asarray([row[self.label_column] for row in rows])
        except ValueError as error:  # ragged per-step or multi-label rows
            raise ValueError(f"column '{self.label_column}' holds rows of different lengths: {error}") from error
        if labels.ndim > 2 or labels.dtype.kind not in "biuf":
            raise ValueError(
                f"column '{self.label_column}' must hold numbers (one per row, or one list per row), got "
                f"{labels.dtype} values of shape {labels.shape}; map the labels to ids 0..num_labels-1 first"
            )
        if self.problem_type != "single_label_classification":
            if not np.isfinite(labels.astype(np.float64)).all():
                raise ValueError(f"column '{self.label_column}' holds NaN or infinite {self.problem_type} targets")
            return torch.as_tensor(labels.astype(np.float32))
        if labels.dtype.kind == "f":
            fractional = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
            if fractional.size:
                rows_with = sorted({int(index) // max(labels[0].size, 1) for index in fractional})
                raise ValueError(
                    f"column '{self.label_column}' holds {labels.reshape(-1)[fractional][:5].tolist()} in batch row(s) "
                    f"{rows_with[:5]}: class ids must be whole numbers (they are not truncated); map the "
                    "labels to ids 0..num_labels-1 first"
                )
        return torch.as_tensor(labels.astype(np.int64))

    def _stack(self, rows: list[Mapping[str, Any]], name: str, present: torch.Tensor) -> torch.Tensor:
        arrays = []
        for index, row in enumerate(rows):
            if name not in row:
                raise KeyError(f"batch row {index} has no column for modality '{name}' (columns: {sorted(row)})")
            array = np.asarray(row[name], dtype=np.float32)
            if array.ndim != 2:
                raise ValueError(f"modality '{name}' in batch row {index} has shape {array.shape}, expected (time, channels)")
            if arrays and array.shape != arrays[0].shape:
                raise ValueError(
                    f"modality '{name}' has shape {array.shape} in batch row {index} but {arrays[0].shape} in row 0"
                )
            if present[index] and not np.isfinite(array).all():
                raise ValueError(
                    f"modality '{name}' in batch row {index} holds {int((~np.isfinite(array)).sum())} NaN/inf "
                    "values; fill them, or mark the modality absent in the row's modality_mask"
                )
            arrays.append(array)
        return torch.from_numpy(np.stack(arrays))


@lru_cache(maxsize=None)
def load_metric(name: str, config_name: str | None = None):
    """The local ``evaluate`` module ``name`` (one of :data:`METRIC_NAMES`), loaded offline from this package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; available: {METRIC_NAMES}")
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), config_name)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and AUROC of (N, C) logits against (N,) class ids.

    Macro-F1 averages over all C classes. AUROC is binary (positive-class probability) for C = 2 and the
    one-vs-rest mean over the classes present otherwise; for C = 2 ``average_precision`` (area under the
    precision-recall curve of class 1, sklearn's step-wise estimate) is added too. Both are left out when
    ``labels`` hold a single class (they are undefined there).
    """
    logits, labels = np.asarray(logits), np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"{int((~np.isfinite(logits)).sum())} logits are NaN or infinite")
    predictions = logits.argmax(axis=-1)
    results = {
        **load_metric("accuracy").compute(predictions=predictions, references=labels),
        **load_metric("macro_f1").compute(
            predictions=predictions, references=labels, labels=list(range(logits.shape[1]))
        ),
    }
    if np.unique(labels).size >= 2:
        probabilities = softmax(logits)
        if logits.shape[1] == 2:
            from sklearn.metrics import average_precision_score

            results.update(load_metric("roc_auc", "binary").compute(prediction_scores=probabilities[:, 1], references=labels))
            results["average_precision"] = float(average_precision_score(labels, probabilities[:, 1]))
        else:
            results.update(load_metric("roc_auc", "multiclass").compute(prediction_scores=probabilities, references=labels))
    return results


def per_step_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """:func:`classification_metrics` over the labelled steps of (N, T, C) per-step logits against (N, L) class ids
    (L a multiple of T, -100 = unlabelled; step s is scored with token ⌊s·T/L⌋, as the model's loss does)."""
    logits, labels = np.asarray(logits), np.asarray(labels).astype(np.int64)
    if logits.ndim != 3 or labels.ndim != 2 or labels.shape[0] != logits.shape[0] or labels.shape[1] % logits.shape[1]:
        raise ValueError(f"expected logits (N, T, C) and labels (N, L) with L a multiple of T, got {logits.shape} "
                         f"and {labels.shape}")
    per_step = np.repeat(logits, labels.shape[1] // logits.shape[1], axis=1)
    labelled = labels != IGNORE_INDEX
    return classification_metrics(per_step[labelled], labels[labelled])


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean absolute error, root mean squared error and R² (sklearn, averaged over outputs) of (N,) or (N, C)
    predictions against targets of the same size."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    predictions = predictions.reshape(targets.shape) if predictions.size == targets.size else predictions
    if predictions.shape != targets.shape or not np.isfinite(predictions).all():
        raise ValueError(f"expected finite predictions shaped like the targets {targets.shape}, got {predictions.shape}")
    results = {"mae": float(mean_absolute_error(targets, predictions)),
               "rmse": float(np.sqrt(mean_squared_error(targets, predictions)))}
    if len(targets) >= 2:
        results["r2"] = float(r2_score(targets, predictions))
    return results


def multi_label_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Macro-F1 (a label is predicted where its sigmoid is ≥ 0.5) and macro AUROC (over the labels that hold both
    values; left out when none does) of (N, C) logits against (N, C) 0/1 targets (sklearn)."""
    from sklearn.metrics import f1_score, roc_auc_score

    logits, labels = np.asarray(logits, np.float64), np.asarray(labels).astype(np.int64)
    if logits.shape != labels.shape or logits.ndim != 2:
        raise ValueError(f"expected logits and labels of the same (N, C) shape, got {logits.shape} and {labels.shape}")
    results = {"macro_f1": float(f1_score(labels, logits >= 0.0, average="macro", zero_division=0))}
    both = [column for column in range(labels.shape[1]) if np.unique(labels[:, column]).size == 2]
    if both:
        results["macro_auroc"] = float(roc_auc_score(labels[:, both], logits[:, both], average="macro"))
    return results


def task_metrics(logits: np.ndarray, labels: np.ndarray, problem_type: str | None = None) -> dict[str, float]:
    """The metrics of a head's outputs for its ``problem_type`` (None = single-label): per-step classification for
    (N, T, C) logits, else :func:`classification_metrics`, :func:`multi_label_metrics` or
    :func:`regression_metrics`."""
    if np.ndim(logits) == 3:
        return per_step_metrics(logits, labels)
    if problem_type == "regression":
        return regression_metrics(logits, labels)
    if problem_type == "multi_label_classification":
        return multi_label_metrics(logits, labels)
    return classification_metrics(logits, labels)


def compute_metrics(eval_prediction, problem_type: str | None = None) -> dict[str, float]:
    """``Trainer``'s ``compute_metrics``: :func:`task_metrics` of the logits, the first prediction array (the model
    may return more). For regression or multi-label models pass
    ``functools.partial(compute_metrics, problem_type=model.config.problem_type)``."""
    predictions = eval_prediction.predictions
    logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    return task_metrics(logits, eval_prediction.label_ids, problem_type)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on the weight matrices (linear, convolution, GRU, experts' stacked
    weights, router gates), none on biases (``bias``, ``b_in`` / ``b_out`` of the feed-forward experts, GRU
    biases) or normalisation parameters (LayerNorm, BatchNorm). Frozen parameters are left out."""
    norms = (torch.nn.LayerNorm, torch.nn.BatchNorm1d)
    no_decay = {f"{module_name}.{name}".lstrip(".") for module_name, module in model.named_modules()
                for name, _ in module.named_parameters(recurse=False)
                if isinstance(module, norms) or "bias" in name or name in ("b_in", "b_out")}
    trainable = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    return [
        {"params": [parameter for name, parameter in trainable if name not in no_decay], "weight_decay": weight_decay},
        {"params": [parameter for name, parameter in trainable if name in no_decay], "weight_decay": 0.0},
    ]


BEST_METRIC = {"single_label_classification": ("macro_f1", True), "multi_label_classification": ("macro_f1", True),
               "regression": ("rmse", False)}


def merge_training_arguments(output_dir: str | Path, problem_type: str | None = None, **overrides):
    """``TrainingArguments`` for MERGE: keeps the modality columns (``remove_unused_columns=False``), names the
    label (``label_names=["labels"]``), selects the best checkpoint on validation macro-F1 (RMSE, lower is better,
    for ``problem_type="regression"``) and reports to no tracker unless told; ``overrides`` replace any of these."""
    from transformers import TrainingArguments

    best_metric, greater_is_better = BEST_METRIC[problem_type or "single_label_classification"]
    settings = {
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "load_best_model_at_end": True,
        "metric_for_best_model": best_metric,
        "greater_is_better": greater_is_better,
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "cosine",
        "report_to": "none",
        **overrides,
    }
    return TrainingArguments(output_dir=str(output_dir), **settings)


def check_modalities_match(model_modalities: Mapping[str, int], data_modalities: Mapping[str, int], what: str) -> None:
    """Raise if a model (``what`` names it: a checkpoint path, a sidecar) was built for other modalities,
    other channel counts or another modality order than the data."""
    model_modalities, data_modalities = dict(model_modalities), dict(data_modalities)
    if model_modalities == data_modalities and list(model_modalities) == list(data_modalities):
        return
    missing = [name for name in data_modalities if name not in model_modalities]
    extra = [name for name in model_modalities if name not in data_modalities]
    channels = {name: (model_modalities[name], data_modalities[name]) for name in data_modalities
                if name in model_modalities and model_modalities[name] != data_modalities[name]}
    details = []
    if missing:
        details.append(f"the data has modalities it lacks: {missing}")
    if extra:
        details.append(f"it has modalities the data lacks: {extra}")
    if channels:
        details.append("channels differ (it, data): " + ", ".join(f"{n} {c}" for n, c in channels.items()))
    if not details:
        details.append(f"the modality order differs: {list(model_modalities)} vs the data's {list(data_modalities)}")
    raise ValueError(f"{what} does not match the dataset: " + "; ".join(details))


def checkpoints_by_step(root: str | Path) -> list[tuple[int, Path]]:
    """The completed ``checkpoint-<step>`` folders under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), path) for path in root.iterdir() if (m := CHECKPOINT_PATTERN.match(path.name)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The completed ``checkpoint-<step>`` folder with the highest step under ``root`` (None if there is none)."""
    steps = checkpoints_by_step(root)
    return steps[-1][1] if steps else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent ``checkpoint-<step>`` folders under ``root``."""
    steps = checkpoints_by_step(root)
    for _, path in steps[:-keep] if keep > 0 else steps:
        shutil.rmtree(path)


def drop_checkpoints_from(root: str | Path, step: int, delete: bool = True) -> Path | None:
    """After a non-finite loss computed from the weights of optimizer step ``step``: delete the checkpoints of
    that step and later (they hold those weights; only where ``delete``) and return the latest earlier one, the
    last whose weights gave a finite loss (None if there is none)."""
    earlier = None
    for checkpoint_step, path in checkpoints_by_step(root):
        if checkpoint_step < step:
            earlier = path
        elif delete:
            shutil.rmtree(path)
    return earlier


def changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``name: recorded → current`` for every setting that differs; nested dicts are compared by dotted name."""
    changes = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name, "(unset)"), current.get(name, "(unset)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += changed_settings(old, new, f"{prefix}{name}.")
        elif old != new:
            changes.append(f"{prefix}{name}: {old!r} → {new!r}")
    return changes


class MetricsLog:
    """Append-only JSON-lines log (one JSON object per line, flushed at once so a crash loses nothing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record, default=float) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def rewind(self, step: int) -> None:
        """Keep only the train / validation records up to ``step``, the last checkpoint's (a resumed run writes
        the rest again; a fresh run, step 0, starts empty). A line torn by a kill mid-write is dropped."""
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
        kept = [record for record in records if record.get("split") != "test" and record.get("step", 0) <= step]
        atomic_write(self.path, "".join(json.dumps(record, default=float) + "\n" for record in kept))


EXPERT_SHARE_WARNING_RANGE = (0.01, 0.60)


class RoutingAlignment:
    """Routing-alignment metrics of a MoE model over a split, from its router outputs and the RUS it holds.

    Feed every batch's outputs (`output_router_probs=True`) to :meth:`update`; :meth:`compute` returns
    `routing_expert_share_min` / `_max` (share of top-k slots of the least and most used expert, over all MoE
    layers) and, averaged over MoE layers, `routing_redundant_pair_jsd` vs `routing_non_redundant_pair_jsd`
    (mean JSD in nats between the router distributions of two modalities' tokens at the same step: redundant
    pairs should be closer; `routing_redundant_not_unique_pair_jsd` leaves out the redundant cells that the
    paper's rule also marks unique, which the uniqueness loss pushes apart), `routing_unique_pair_jsd` vs
    `routing_non_unique_pair_jsd` (unique pairs farther),
    and `routing_synergy_share_synergistic` vs `routing_synergy_share_other` (share of the slots of tokens in
    synergistic cells, and of the other tokens, that go to the synergy experts). The RUS conditions are the
    model's (thresholds resolved by `set_rus`), so the softmax / Laplace routers, which never read RUS, are
    measured against the same structure as a control.
    """

    def __init__(self) -> None:
        self.layer_counts: list[dict[str, torch.Tensor]] = []

    def update(self, model, batch: Mapping[str, Any], outputs) -> None:
        merge = getattr(model, "merge", model)
        if not outputs.router_probs or not bool(merge.rus_is_set):
            return
        presence = batch["modality_mask"].to(device=outputs.router_probs[0].device, dtype=torch.bool)
        context = merge.rus_context(outputs.router_probs[0].shape[2], presence)
        for layer, (probs, experts) in enumerate(zip(outputs.router_probs, outputs.selected_experts)):
            counts = routing_alignment_counts(probs.float(), experts, presence, context, model.config.num_synergy_experts)
            if layer == len(self.layer_counts):
                self.layer_counts.append({name: value.detach() for name, value in counts.items()})
            else:
                for name, value in counts.items():
                    self.layer_counts[layer][name] = self.layer_counts[layer][name] + value.detach()

    def compute(self, accelerator=None) -> dict[str, float]:
        """The metrics (empty for a dense model or one without RUS); counts are summed over processes."""
        if not self.layer_counts:
            return {}
        per_layer = []
        for counts in self.layer_counts:
            if accelerator is not None:
                counts = {name: accelerator.reduce(value, reduction="sum") for name, value in counts.items()}
            ratio = {name: float(counts[f"{name}_jsd"] / counts[f"{name}_pairs"]) if counts[f"{name}_pairs"] > 0
                     else float("nan") for name in ("redundant", "non_redundant", "unique", "non_unique",
                                                    "redundant_not_unique")}
            shares = counts["expert_slots"] / counts["expert_slots"].sum().clamp(min=1)
            per_layer.append({
                "expert_shares": shares.cpu().tolist(),
                **{f"{name}_pair_jsd": value for name, value in ratio.items()},
                **{f"synergy_share_{cell}": float(counts[f"{cell}_synergy_slots"] / counts[f"{cell}_slots"])
                   if counts[f"{cell}_slots"] > 0 else float("nan") for cell in ("synergistic", "other")},
            })
        metrics = {
            "routing_expert_share_min": min(min(layer["expert_shares"]) for layer in per_layer),
            "routing_expert_share_max": max(max(layer["expert_shares"]) for layer in per_layer),
        }
        for name in per_layer[0]:
            if name != "expert_shares":
                values = [layer[name] for layer in per_layer if not np.isnan(layer[name])]
                if values:  # left out where no token pair / cell of that kind exists
                    metrics[f"routing_{name}"] = float(np.mean(values))
        return metrics


def routing_summary(metrics: Mapping[str, float]) -> str | None:
    """One line on the routing-alignment metrics in ``metrics`` (None when it has none)."""
    if "routing_expert_share_min" not in metrics:
        return None

    def value(name: str, form: str) -> str:
        return format(metrics[f"routing_{name}"], form) if f"routing_{name}" in metrics else "n/a"

    also_unique = ""  # where the unique-pair rule also marks redundant cells, which the uniqueness loss pushes apart
    if "routing_unique_pair_jsd" in metrics and value("redundant_not_unique_pair_jsd", ".3f") != value(
            "redundant_pair_jsd", ".3f"):
        also_unique = f" ({value('redundant_not_unique_pair_jsd', '.3f')} without those also unique)"

    return (f"routing: experts get {value('expert_share_min', '.1%')}–{value('expert_share_max', '.1%')} of the "
            f"slots; synergy experts {value('synergy_share_synergistic', '.0%')} of synergistic-cell slots vs "
            f"{value('synergy_share_other', '.0%')} elsewhere; routing JSD redundant pairs "
            f"{value('redundant_pair_jsd', '.3f')}{also_unique} vs {value('non_redundant_pair_jsd', '.3f')}, "
            + (f"unique pairs {value('unique_pair_jsd', '.3f')} vs {value('non_unique_pair_jsd', '.3f')} nats"
               if "routing_unique_pair_jsd" in metrics else "nats; no unique pairs"))


def routing_balance_warning(metrics: Mapping[str, float]) -> str | None:
    """A message when an expert's slot share is outside `EXPERT_SHARE_WARNING_RANGE` (collapsed routing)."""
    low, high = EXPERT_SHARE_WARNING_RANGE
    least, most = metrics.get("routing_expert_share_min"), metrics.get("routing_expert_share_max")
    if least is None or (least >= low and most <= high):
        return None
    return (f"routing is unbalanced: expert slot shares range {least:.1%}–{most:.1%} (warning outside {low:.0%}–"
            f"{high:.0%}); experts below it barely train. See router_bias_update_rate and synergy_target_mass.")


@torch.no_grad()
def evaluate_model(model, loader, accelerator=None, keep_routing: bool = False):
    """The metrics of ``model``'s head and problem type (:func:`task_metrics`) over ``loader``, with the :class:`RoutingAlignment` metrics for a MoE
    model that holds RUS; with an ``accelerator`` the logits are gathered from every process
    (``gather_for_metrics``). With ``keep_routing`` also returns the experts chosen per MoE layer, a list of
    (N, M, T, k) arrays, and the (N, M) presence masks (for :func:`modeling_merge.plotting.routing_shares`);
    otherwise those are None."""
    model.eval()
    logits_parts, label_parts, routing_parts, mask_parts = [], [], [], []
    alignment = RoutingAlignment()
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    for batch in loader:
        outputs = model(**batch, output_router_probs=True)
        alignment.update(unwrapped, batch, outputs)
        logits, labels = outputs.logits.float(), batch["labels"]
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        logits_parts.append(logits.cpu().numpy())
        label_parts.append(labels.cpu().numpy())
        if keep_routing and outputs.selected_experts:
            routing_parts.append([layer.cpu().numpy() for layer in outputs.selected_experts])
            mask_parts.append(batch["modality_mask"].cpu().numpy())
    metrics = task_metrics(np.concatenate(logits_parts), np.concatenate(label_parts), unwrapped.config.problem_type)
    metrics.update(alignment.compute(accelerator))
    if not routing_parts:
        return metrics, None, None
    routing = [np.concatenate([parts[layer] for parts in routing_parts]) for layer in range(len(routing_parts[0]))]
    return metrics, routing, np.concatenate(mask_parts)


def interpretation_figures(model, loader, output_dir: str | Path, lags_seconds: Sequence[float] | None = None,
                           title: str | None = None) -> list[Path]:
    """Write ``temporal_rus.png`` (the RUS stored in the model, paper Fig. 5; only when a RUS is set) and, for MoE
    routers, ``routing.png``
    (share of each modality's routing slots per expert per MoE layer over ``loader``, paper Fig. 8, with the
    routing-alignment metrics; ``title`` names the run)."""
    from .plotting import plot_routing_distribution, plot_temporal_rus, routing_shares

    output_dir = Path(output_dir)
    names = list(model.config.modalities)
    rus = [getattr(model.merge, f"rus_{kind}").detach().cpu().numpy() for kind in ("redundancy", "uniqueness", "synergy")]
    figures = [plot_temporal_rus(*rus, names, output_dir / "temporal_rus.png", lags_seconds)] if model.merge.rus_is_set \
        else []
    metrics, routing, masks = evaluate_model(model, loader, keep_routing=True)
    if routing is not None:
        shares = routing_shares(routing, model.config.num_experts, masks)
        figures.append(plot_routing_distribution(shares, names, output_dir / "routing.png",
                                                 num_synergy_experts=model.config.num_synergy_experts,
                                                 title=title, alignment_text=routing_summary(metrics)))
    return figures
