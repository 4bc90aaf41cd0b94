"""From a built dataset to a MERGE model: the config its metadata implies, and the model holding its RUS.

    from dataset_builders import build, metadata_of
    from modeling_merge.from_dataset import model_from_dataset
    from modeling_merge.rus.sidecar import RusSidecar

    splits = build("wesad_e4", data_dir="../shared/data/wesad_e4")
    metadata = metadata_of(splits)
    sidecar = RusSidecar.for_dataset(splits, metadata, num_lags=4, cache="runs/wesad/rus.safetensors")
    model = model_from_dataset(metadata, sidecar, router_type="softmax", d_model=64)

The head follows the metadata (:func:`head_class`): ``MergeForTokenClassification`` for per-step labels
(``label_granularity="step"``), ``MergeForSequenceClassification`` otherwise, with the metadata's ``problem_type``
(single-label classification, or regression with one output). ``examples/train.py`` and ``merge-rus`` are thin
over these and ``RusSidecar.for_dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .configuration_merge import MergeConfig

__all__ = ["AUX_LOSSES", "head_class", "merge_config_from_dataset", "model_from_dataset"]

AUX_LOSSES = ("redundancy", "uniqueness", "synergy", "load_balance")


def merge_config_from_dataset(metadata, num_rus_lags: int = 4, disable_aux_losses: Sequence[str] = (),
                              **overrides: Any) -> MergeConfig:
    """A ``MergeConfig`` for the data ``metadata`` (a ``DatasetMetadata``) describes: modalities in order with
    their channels, patch sizes, the token-grid length, the labels and the metadata's ``problem_type``.
    ``disable_aux_losses`` (names from :data:`AUX_LOSSES`) sets those loss weights to 0; ``overrides`` are any
    other ``MergeConfig`` fields (``router_type``, ``d_model``, …). Unknown names are errors naming them."""
    unknown = sorted(set(disable_aux_losses) - set(AUX_LOSSES))
    if unknown:
        raise ValueError(f"disable_aux_losses got {unknown}; choose from {AUX_LOSSES}")
    fields = {**metadata.merge_config_kwargs(), "problem_type": metadata.problem_type, "num_rus_lags": num_rus_lags,
              **overrides}
    fields.update({f"{name}_loss_weight": 0.0 for name in disable_aux_losses})
    return MergeConfig(**fields)


def head_class(metadata):
    """The model class for the labels ``metadata`` describes: ``MergeForTokenClassification`` for per-step labels
    (``label_granularity="step"``, one class id per token-grid step), else ``MergeForSequenceClassification``."""
    from .modeling_merge import MergeForSequenceClassification, MergeForTokenClassification

    return MergeForTokenClassification if metadata.label_granularity == "step" else MergeForSequenceClassification


def model_from_dataset(metadata, sidecar=None, num_rus_lags: int | None = None, disable_aux_losses: Sequence[str] = (),
                       model_class=None, **overrides: Any):
    """A freshly initialised model for the data ``metadata`` describes (:func:`merge_config_from_dataset`) holding
    the RUS of ``sidecar`` (a ``RusSidecar``, checked against the model's modalities and lags; its lag count is
    the default ``num_rus_lags``). ``model_class``: default :func:`head_class` of the metadata."""
    model_class = model_class or head_class(metadata)
    if num_rus_lags is None:
        num_rus_lags = sidecar.num_lags if sidecar is not None else 4
    model = model_class(merge_config_from_dataset(metadata, num_rus_lags, disable_aux_losses, **overrides))
    if sidecar is not None:
        sidecar.apply_to(model)
    return model
