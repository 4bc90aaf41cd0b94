"""The MERGE processor: raw per-modality recordings → model input, saved with every checkpoint.

`MergeProcessor` (the transformers feature-extractor pattern: `save_pretrained` writes
`preprocessor_config.json`, `from_pretrained` / `AutoProcessor.from_pretrained` read it back) holds what the
model was trained on — per modality its channels, sampling rate and patch size, the token grid (rate and
window length) and the training split's normalisation statistics — and turns one recording (arrays of any
length, each at its own sampling rate) into windows the model accepts: every modality resampled onto its
rate on the token grid (`token_grid_hz · patch_size`), optionally z-scored over the whole recording, cut into
windows `stride` steps apart, normalised with the training statistics, absent modalities zero-filled and
marked in `modality_mask`. `TimeSeriesClassificationPipeline` (task "time-series-classification") adds the
model and returns a label with scores per window.

This file travels with checkpoints for `trust_remote_code`: it imports numpy, torch and transformers only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import Pipeline
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin

PROCESSOR_AUTO_MAP = {
    "AutoFeatureExtractor": "processing_merge.MergeProcessor",
    "AutoProcessor": "processing_merge.MergeProcessor",
}
PIPELINE_TASK = "time-series-classification"


def resample_to_grid(values: np.ndarray, rate_hz: float, grid_hz: float, steps: int, start_s: float = 0.0) -> np.ndarray:
    """A signal (N, C) sampled at `rate_hz` from `start_s` seconds → `steps` steps (steps, C) of a `grid_hz` grid.

    Step k is the mean of the linearly interpolated signal over [k, k + 1) / grid_hz seconds (a faster signal is
    mean-downsampled, a slower one interpolated; times outside the samples hold the edge value). With an
    integer rate ratio and `start_s` 0 it is exactly the mean of samples k·ratio … (k + 1)·ratio − 1. The same
    rule as `dataset_builders._common.resample_to_grid` (this copy keeps the file self-contained for remote code;
    tests check that both agree).
    """
    values = np.asarray(values, dtype=np.float64)
    ratio = rate_hz / grid_hz
    factor = int(ratio) if start_s == 0 and ratio == int(ratio) and values.shape[0] >= steps * int(ratio) else 0
    if not factor:
        factor = max(1, int(np.ceil(ratio)))
        fine_times = (np.arange(steps * factor) + 0.5) / (grid_hz * factor)
        sample_times = start_s + np.arange(values.shape[0]) / rate_hz
        values = np.stack([np.interp(fine_times, sample_times, values[:, c]) for c in range(values.shape[1])], axis=1)
    return values[: steps * factor].reshape(steps, factor, values.shape[1]).mean(axis=1)


class MergeProcessor(FeatureExtractionMixin):
    r"""Turns raw recordings into MERGE model input; saved as `preprocessor_config.json` beside a checkpoint.

    Args:
        modalities (`dict[str, int]`): ordered name → channels, as in `MergeConfig.modalities` (a list of
            `[name, channels]` pairs is accepted too, and is how the JSON stores it).
        token_grid_hz (`float`): rate of the token grid (Hz).
        token_grid_length (`int`): window length in token-grid steps (`window_seconds` = length / rate).
        stride (`int`): default step between window starts, in token-grid steps.
        patch_sizes (`dict[str, int]`): input steps per token of a modality (absent names: 1); the modality is
            resampled to `token_grid_hz · patch_size` Hz and each window holds `token_grid_length · patch_size` rows.
        sampling_rates_hz (`dict[str, float]`): the model-side rate of each modality (must equal
            `token_grid_hz · patch_size`; kept for people reading the file).
        normalization (`dict[str, dict[str, list[float]]]`): name → `{"mean": [C], "std": [C]}` of the training
            split, applied after windowing; `{}` = the model was trained on unnormalised data.
        per_recording_normalize (`bool`): first z-score every channel over the whole recording (WESAD's
            `per_subject_normalize`).
        channel_names (`dict[str, list[str]]`): optional channel names per modality.
    """

    model_input_names = ["modalities", "modality_mask"]

    def __init__(
        self,
        modalities: Mapping[str, int] | Sequence[Sequence[Any]],
        token_grid_hz: float,
        token_grid_length: int,
        stride: int | None = None,
        patch_sizes: Mapping[str, int] | None = None,
        sampling_rates_hz: Mapping[str, float] | None = None,
        normalization: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
        per_recording_normalize: bool = False,
        channel_names: Mapping[str, Sequence[str]] | None = None,
        **kwargs,
    ):
        kwargs.setdefault("auto_map", dict(PROCESSOR_AUTO_MAP))
        super().__init__(**kwargs)
        self.modalities = {str(name): int(channels) for name, channels in dict(modalities).items()}
        self.token_grid_hz = float(token_grid_hz)
        self.token_grid_length = int(token_grid_length)
        self.stride = int(stride if stride is not None else token_grid_length)
        self.patch_sizes = {name: int((patch_sizes or {}).get(name, 1)) for name in self.modalities}
        self.sampling_rates_hz = {name: self.token_grid_hz * patch for name, patch in self.patch_sizes.items()}
        self.normalization = {name: {key: [float(v) for v in stats[key]] for key in ("mean", "std")}
                              for name, stats in (normalization or {}).items()}
        self.per_recording_normalize = bool(per_recording_normalize)
        self.channel_names = {name: list(names) for name, names in (channel_names or {}).items()}
        self._validate(sampling_rates_hz or {})

    def _validate(self, sampling_rates_hz: Mapping[str, float]) -> None:
        if not self.modalities or min(self.modalities.values()) < 1:
            raise ValueError(f"MergeProcessor: modalities must name at least one modality with >= 1 channel, got {self.modalities}")
        if self.token_grid_hz <= 0 or self.token_grid_length < 1 or self.stride < 1:
            raise ValueError(f"MergeProcessor: token_grid_hz ({self.token_grid_hz}), token_grid_length "
                             f"({self.token_grid_length}) and stride ({self.stride}) must be positive")
        for field, mapping in (("patch_sizes", self.patch_sizes), ("sampling_rates_hz", sampling_rates_hz),
                               ("normalization", self.normalization), ("channel_names", self.channel_names)):
            unknown = sorted(set(mapping) - set(self.modalities))
            if unknown:
                raise ValueError(f"MergeProcessor: {field} names unknown modalities {unknown}; modalities are {list(self.modalities)}")
        for name, rate in sampling_rates_hz.items():
            if not np.isclose(float(rate), self.sampling_rates_hz[name]):
                raise ValueError(f"MergeProcessor: modality {name!r} has sampling rate {rate} Hz but token_grid_hz "
                                 f"{self.token_grid_hz} × patch size {self.patch_sizes[name]} = {self.sampling_rates_hz[name]} Hz")
        for name, stats in self.normalization.items():
            if len(stats["mean"]) != self.modalities[name] or len(stats["std"]) != self.modalities[name]:
                raise ValueError(f"MergeProcessor: normalization of {name!r} needs {self.modalities[name]} means and stds")
            if min(stats["std"]) <= 0:
                raise ValueError(f"MergeProcessor: normalization of {name!r} has a std <= 0")

    @classmethod
    def from_dataset_metadata(cls, metadata, stride: int | None = None) -> MergeProcessor:
        """The processor of a dataset built by `dataset_builders` (its `DatasetMetadata`, see `metadata_of`): the
        same grid, window, patch sizes and training statistics, so raw recordings become what the builder wrote."""
        return cls(
            modalities=metadata.modalities, token_grid_hz=metadata.token_grid_hz, token_grid_length=metadata.window,
            stride=stride if stride is not None else metadata.stride, patch_sizes=metadata.patch_sizes,
            sampling_rates_hz=metadata.sampling_rates_hz,
            normalization=metadata.normalization if metadata.normalization_applied else {},
            per_recording_normalize=bool(metadata.extras.get("per_recording_normalize", False)),
            channel_names=metadata.channel_names,
        )

    @property
    def window_seconds(self) -> float:
        """Window length in seconds."""
        return self.token_grid_length / self.token_grid_hz

    def to_dict(self) -> dict[str, Any]:
        """JSON form; `modalities` as `[name, channels]` pairs because the JSON file sorts keys."""
        output = super().to_dict()
        output["modalities"] = [[name, channels] for name, channels in self.modalities.items()]
        return output

    def __call__(
        self,
        recording: Mapping[str, Any],
        sampling_rates_hz: Mapping[str, float] | None = None,
        start_s: Mapping[str, float] | None = None,
        stride: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Windows of one recording as model input.

        recording: name → array (N_m, C_m) or (N_m,) for one channel, any length; a modality left out or None is
        absent (zero-filled, False in the mask). sampling_rates_hz: the rate of each given array (default: the
        model-side rate). start_s: seconds from the recording's origin to each array's first sample (default 0;
        time before the origin is dropped). stride: token-grid steps between window starts (default
        `self.stride`); window w starts at w · stride / token_grid_hz seconds. The recording spans from the origin
        to the earliest end of its modalities.

        Returns a `BatchFeature` with `modalities` (name → (W, token_grid_length · patch, C) float32) and
        `modality_mask` (W, M) bool, in the model's modality order; `model(**features)` runs it.
        """
        unknown = sorted(set(recording) - set(self.modalities))
        if unknown:
            raise ValueError(f"MergeProcessor: unknown modalities {unknown}; the model takes {list(self.modalities)}")
        arrays = {name: self._checked_array(name, values) for name, values in recording.items() if values is not None}
        if not arrays:
            raise ValueError(f"MergeProcessor: the recording holds none of the modalities {list(self.modalities)}")
        rates = {name: float((sampling_rates_hz or {}).get(name, self.sampling_rates_hz[name])) for name in arrays}
        starts = {name: float((start_s or {}).get(name, 0.0)) for name in arrays}
        for name, rate in rates.items():
            if not rate > 0:
                raise ValueError(f"MergeProcessor: sampling rate of modality {name!r} must be positive, got {rate} Hz")
        duration = min(starts[name] + arrays[name].shape[0] / rates[name] for name in arrays)
        steps = int(duration * self.token_grid_hz)
        if steps < self.token_grid_length:
            raise ValueError(
                f"MergeProcessor: the recording covers {max(duration, 0.0):g} s ({steps} token-grid steps at "
                f"{self.token_grid_hz:g} Hz, up to the end of its shortest modality), shorter than one window of "
                f"{self.window_seconds:g} s ({self.token_grid_length} steps)")
        stride = self.stride if stride is None else int(stride)
        if stride < 1:
            raise ValueError(f"MergeProcessor: stride must be >= 1 token-grid steps, got {stride}")
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(f"MergeProcessor: return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        window_starts = np.arange(0, steps - self.token_grid_length + 1, stride)
        features = {name: self._windows(name, arrays.get(name), rates.get(name), starts.get(name), steps, window_starts)
                    for name in self.modalities}
        mask = np.repeat(np.array([[name in arrays for name in self.modalities]]), len(window_starts), axis=0)
        if return_tensors == "pt":
            return BatchFeature({"modalities": {name: torch.from_numpy(values) for name, values in features.items()},
                                 "modality_mask": torch.from_numpy(mask)})
        return BatchFeature({"modalities": features, "modality_mask": mask})

    def _checked_array(self, name: str, values: Any) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1 and self.modalities[name] == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[1] != self.modalities[name]:
            raise ValueError(f"MergeProcessor: modality {name!r} has shape {array.shape}, expected (time, "
                             f"{self.modalities[name]})" + (" or (time,)" if self.modalities[name] == 1 else ""))
        bad = int((~np.isfinite(array)).sum())
        if bad:
            raise ValueError(f"MergeProcessor: modality {name!r} holds {bad} NaN or infinite value(s); fill or drop them first")
        return array

    def _windows(self, name: str, values: np.ndarray | None, rate: float | None, start: float | None, steps: int,
                 window_starts: np.ndarray) -> np.ndarray:
        """(W, token_grid_length · patch, C) float32 windows of one modality (zeros when absent)."""
        patch, channels = self.patch_sizes[name], self.modalities[name]
        rows = self.token_grid_length * patch
        if values is None:
            return np.zeros((len(window_starts), rows, channels), dtype=np.float32)
        grid = resample_to_grid(values, rate, self.token_grid_hz * patch, steps * patch, start)
        if self.per_recording_normalize:
            grid = (grid - grid.mean(axis=0)) / np.maximum(grid.std(axis=0), 1e-8)
        windows = np.stack([grid[first * patch : first * patch + rows] for first in window_starts]).astype(np.float32)
        if name in self.normalization:
            statistics = self.normalization[name]
            windows = (windows - np.asarray(statistics["mean"], np.float32)) / np.asarray(statistics["std"], np.float32)
        return windows


class TimeSeriesClassificationPipeline(Pipeline):
    """`pipeline("time-series-classification", model=checkpoint)`: one recording (name → array, see
    `MergeProcessor.__call__`) → a list with one dict per window: `start_s`, `end_s`, `label`, `score` and
    `scores` (label → probability), or the multi-label / regression outputs of `postprocess`. Call options: `sampling_rates_hz`, `start_s`, `stride`, `batch_windows`
    (windows per forward pass, default 64)."""

    _load_feature_extractor = True
    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False

    def _sanitize_parameters(self, sampling_rates_hz=None, start_s=None, stride=None, batch_windows=None, **kwargs):
        if kwargs:
            raise TypeError(f"time-series-classification pipeline: unknown options {sorted(kwargs)}; known: "
                            "sampling_rates_hz, start_s, stride, batch_windows")
        preprocess = {key: value for key, value in (("sampling_rates_hz", sampling_rates_hz), ("start_s", start_s),
                                                    ("stride", stride)) if value is not None}
        return preprocess, ({"batch_windows": batch_windows} if batch_windows else {}), {}

    def preprocess(self, recording, sampling_rates_hz=None, start_s=None, stride=None):
        features = self.feature_extractor(recording, sampling_rates_hz=sampling_rates_hz, start_s=start_s, stride=stride)
        stride = self.feature_extractor.stride if stride is None else int(stride)
        return {**features, "window_start_s": np.arange(len(features["modality_mask"])) * stride / self.feature_extractor.token_grid_hz}

    def _forward(self, inputs, batch_windows: int = 64):
        count = len(inputs["modality_mask"])
        logits = [
            self.model(modalities={name: values[first : first + batch_windows] for name, values in inputs["modalities"].items()},
                       modality_mask=inputs["modality_mask"][first : first + batch_windows]).logits
            for first in range(0, count, batch_windows)
        ]
        return {"logits": torch.cat(logits), "window_start_s": inputs["window_start_s"]}

    def postprocess(self, outputs) -> list[dict[str, Any]]:
        """One dict per window. Single-label models: `label` (the most probable class), `score` (its probability)
        and `scores` (softmax over classes); multi-label models: `labels` (classes with sigmoid ≥ 0.5) and `scores`
        (sigmoid per class); regression models: `value` (one number, or a list with several outputs)."""
        logits = outputs["logits"].float()
        problem_type = self.model.config.problem_type or "single_label_classification"
        window = self.feature_extractor.window_seconds
        spans = [{"start_s": float(start), "end_s": float(start + window)} for start in outputs["window_start_s"]]
        if problem_type == "regression":
            values = logits.cpu().numpy()
            return [{**span, "value": float(row[0]) if row.size == 1 else row.tolist()} for span, row in zip(spans, values)]
        labels = [self.model.config.id2label[index] for index in range(logits.shape[1])]
        if problem_type == "multi_label_classification":
            probabilities = logits.sigmoid().cpu().numpy()
            return [{**span, "labels": [label for label, p in zip(labels, row) if p >= 0.5],
                     "scores": dict(zip(labels, map(float, row)))} for span, row in zip(spans, probabilities)]
        probabilities = logits.softmax(-1).cpu().numpy()
        return [
            {**span, "label": labels[int(row.argmax())], "score": float(row.max()),
             "scores": dict(zip(labels, map(float, row)))}
            for span, row in zip(spans, probabilities)
        ]


__all__ = ["MergeProcessor", "TimeSeriesClassificationPipeline", "resample_to_grid"]
