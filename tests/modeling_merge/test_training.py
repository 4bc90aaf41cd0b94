"""Training helpers: the dict-of-modalities collator, run bookkeeping, and a few real `Trainer` steps."""

import json

import numpy as np
import pytest
import torch

from modeling_merge.training import (
    MetricsLog,
    MultimodalCollator,
    atomic_directory,
    check_modalities_match,
    latest_checkpoint,
    prune_checkpoints,
)


def _row(label=0, acc_steps=8, bvp_steps=16, **overrides):
    row = {"acc": np.ones((acc_steps, 3), np.float32) * label, "bvp": np.zeros((bvp_steps, 1), np.float32),
           "label": label, "subject": "S2"}
    row.update(overrides)
    return row


def test_collator_stacks_modalities_in_config_order_with_labels_and_mask():
    rows = [_row(0, modality_mask=[True, False]), _row(1, modality_mask=[True, True])]
    batch = MultimodalCollator(["acc", "bvp"])(rows)
    assert list(batch["modalities"]) == ["acc", "bvp"]
    assert batch["modalities"]["acc"].shape == (2, 8, 3) and batch["modalities"]["acc"].dtype == torch.float32
    assert batch["modalities"]["bvp"].shape == (2, 16, 1)
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.int64
    assert batch["modality_mask"].tolist() == [[True, False], [True, True]]
    assert "subject" not in batch


def test_collator_names_the_modality_and_row_of_bad_input():
    collate = MultimodalCollator(["acc", "bvp"])
    with pytest.raises(KeyError, match="modality 'bvp'"):
        collate([{"acc": np.ones((8, 3)), "label": 0}])
    with pytest.raises(ValueError, match=r"modality 'acc' has shape \(7, 3\) in batch row 1"):
        collate([_row(), _row(acc_steps=7)])
    nan_row = _row(acc=np.full((8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="modality 'acc' in batch row 1 holds 24 NaN"):
        collate([_row(), nan_row])
    with pytest.raises(ValueError, match="modality_mask"):
        collate([_row(modality_mask=[True])])


def test_check_modalities_match_explains_what_differs():
    check_modalities_match({"acc": 3, "bvp": 1}, {"acc": 3, "bvp": 1}, "checkpoint x")
    with pytest.raises(ValueError, match=r"checkpoint x .*lacks: \['eda'\]"):
        check_modalities_match({"acc": 3, "bvp": 1}, {"acc": 3, "bvp": 1, "eda": 1}, "checkpoint x")
    with pytest.raises(ValueError, match=r"channels differ .*acc \(3, 6\)"):
        check_modalities_match({"acc": 3}, {"acc": 6}, "checkpoint x")
    with pytest.raises(ValueError, match="order differs"):
        check_modalities_match({"bvp": 1, "acc": 3}, {"acc": 3, "bvp": 1}, "checkpoint x")


def test_atomic_directory_keeps_the_old_folder_when_the_write_fails(tmp_path):
    final = tmp_path / "best_model"
    with atomic_directory(final) as folder:
        (folder / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as folder:
            (folder / "weights").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (final / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["best_model"]


def test_latest_checkpoint_ignores_partial_folders_and_pruning_keeps_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 40, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / ".checkpoint-60.partial").mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-40"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-60.partial", "checkpoint-12", "checkpoint-40"]


def test_metrics_log_appends_one_json_object_per_line(tmp_path):
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    log.write(split="train", step=1, loss=np.float32(0.5))
    log.write(split="validation", step=1, accuracy=0.75)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in lines] == ["train", "validation"]
    assert log.read()[0]["loss"] == pytest.approx(0.5)
