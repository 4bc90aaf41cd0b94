"""Writers of small files in the benchmarks' exact official formats (for the builder tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def segment_labels(segments: list[tuple[int, int]]) -> np.ndarray:
    """[(label, rows), ...] → (sum rows,) label per row."""
    return np.concatenate([np.full(rows, label, dtype=np.int64) for label, rows in segments])


def write_pamap2_subject(protocol_dir: Path, subject: str, segments: list[tuple[int, int]], seed: int = 0) -> Path:
    """`subject<id>.dat`: 54 space-separated columns at 100 Hz; heart rate only every 11th row (NaN else),
    a wireless drop (NaN run) in the hand IMU; the IMU signal level encodes the activity (so windows are
    checkable). Returns the file path."""
    rng = np.random.default_rng(seed)
    activity = segment_labels(segments)
    rows = activity.size
    table = rng.normal(size=(rows, 54)) + activity[:, None]
    table[:, 0] = np.arange(rows) / 100.0
    table[:, 1] = activity
    table[:, 2] = np.where(np.arange(rows) % 11 == 0, 80.0 + activity, np.nan)
    table[rows // 3 : rows // 3 + 7, 3:20] = np.nan
    protocol_dir.mkdir(parents=True, exist_ok=True)
    path = protocol_dir / f"subject{subject}.dat"
    lines = [
        f"{row[0]:.2f} {int(row[1])} " + " ".join("NaN" if np.isnan(value) else f"{value:.6f}" for value in row[2:])
        for row in table
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_wesad_pickle(subject_dir: Path, subject: str, segments: list[tuple[int, int]], seed: int = 0) -> Path:
    """`S<k>.pkl` as the official archive has it (Python-2 style latin1-safe pickle, protocol 2).

    segments: [(label, seconds)]; chest signals and labels at 700 Hz, wrist ACC 32 Hz, BVP 64 Hz, EDA and
    TEMP 4 Hz; every signal's level is its label so downsampled windows are checkable.
    """
    rng = np.random.default_rng(seed)
    seconds_labels = segment_labels(segments)
    seconds = seconds_labels.size

    def signal(rate: int, channels: int) -> np.ndarray:
        level = np.repeat(seconds_labels, rate).astype(np.float64)[:, None]
        return level + 0.01 * rng.normal(size=(seconds * rate, channels))

    chest = {"ACC": signal(700, 3), "ECG": signal(700, 1), "EMG": signal(700, 1), "EDA": signal(700, 1)}
    chest.update({"Temp": signal(700, 1).astype(np.float32), "Resp": signal(700, 1)})
    wrist = {"ACC": signal(32, 3), "BVP": signal(64, 1), "EDA": signal(4, 1), "TEMP": signal(4, 1)}
    payload = {"signal": {"chest": chest, "wrist": wrist}, "label": np.repeat(seconds_labels, 700).astype(np.int32)}
    payload["subject"] = subject
    subject_dir.mkdir(parents=True, exist_ok=True)
    path = subject_dir / f"{subject}.pkl"
    with open(path, "wb") as handle:
        pickle.dump(payload, handle, protocol=2)
    return path


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def code_running_pickle(marker: Path) -> bytes:
    """A crafted pickle: unpickling it creates the file ``marker`` (standing for any code such a file runs)."""
    return pickle.dumps(_RunsCodeWhenUnpickled(marker))


def write_opportunity_run(
    dataset_dir: Path, run: str, segments: list[tuple[int, int]], mostly_nan_columns: tuple[int, ...] = (), seed: int = 0
) -> Path:
    """`S<s>-ADL<r>.dat`: 250 space-separated columns at 30 Hz (1-based column c is `table[:, c - 1]`).

    segments: [(HL_Activity, rows)]. The signal level encodes HL_Activity − 100; every sensor column has
    a short NaN run; `mostly_nan_columns` are NaN on 80 % of the rows (sensor lost)."""
    rng = np.random.default_rng(seed)
    activity = segment_labels(segments)
    rows = activity.size
    table = rng.normal(size=(rows, 250)) + np.where(activity > 0, activity - 100, 0)[:, None]
    table[:, 0] = np.arange(rows) * 33
    table[5:9, 1:243] = np.nan
    for column in mostly_nan_columns:
        table[: int(0.8 * rows), column - 1] = np.nan
    table[:, 243:250] = 0
    table[:, 243] = rng.integers(1, 6, size=rows)
    table[:, 244] = activity
    dataset_dir.mkdir(parents=True, exist_ok=True)
    path = dataset_dir / f"{run}.dat"
    integer_columns = {0, *range(243, 250)}
    lines = [
        " ".join(
            "NaN" if np.isnan(value) else (str(int(value)) if index in integer_columns else f"{value:.5f}")
            for index, value in enumerate(row)
        )
        for row in table
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_MODEL = dict(
    d_model=16, num_attention_heads=2, ffn_dim=32, num_encoder_layers=1, num_blocks=2, num_moe_blocks=1,
    num_feedforward_experts=3, num_synergy_experts=1, expert_hidden_dim=16, router_hidden_dim=8, router_gru_dim=8,
    router_attention_dim=8, num_rus_lags=2, dropout=0.0, router_type="softmax",
)


def forward_through_merge(built, rows: int = 4):
    """Feed the first train rows of any built DatasetDict, as stored, to a tiny MERGE head built from
    `metadata_of(built).merge_config_kwargs()`: `MergeForTokenClassification` for per-step labels, else
    `MergeForSequenceClassification` (a regression head for a regression target); checks the logits' shape (one
    row of scores per example, or per example and step) and a finite loss."""
    import torch

    from dataset_builders import metadata_of
    from modeling_merge.configuration_merge import MergeConfig
    from modeling_merge.modeling_merge import MergeForSequenceClassification, MergeForTokenClassification

    metadata = metadata_of(built)
    per_step = metadata.label_granularity == "step"
    head = MergeForTokenClassification if per_step else MergeForSequenceClassification
    model = head(MergeConfig(**metadata.merge_config_kwargs(), **TINY_MODEL)).eval()
    batch = built["train"].with_format("torch")[:rows]
    with torch.no_grad():
        output = model(
            modalities={name: batch[name] for name in metadata.modality_names},
            modality_mask=batch.get("modality_mask"),
            labels=batch["label"],
        )
    count = min(rows, built["train"].num_rows)
    assert output.logits.shape == ((count, metadata.window) if per_step else (count,)) + (metadata.num_labels,)
    assert torch.isfinite(output.loss)
    return output
