"""MergeProcessor and the time-series-classification pipeline: raw recordings → exactly the builders' model input,
saved beside a checkpoint, loaded by the Auto classes and as remote code, clear errors on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoProcessor, pipeline

from dataset_builders import build, metadata_of
from dataset_builders._common import drop_implausible
from dataset_builders._common import resample_to_grid as builder_resample_to_grid
from dataset_builders.synthetic import planted_structure
from dataset_builders.wesad import E4_FILES, PLAUSIBLE_RANGES, read_e4_csv
from modeling_merge import MergeConfig, MergeForSequenceClassification, MergeProcessor
from modeling_merge.hub import ModelCardInfo, export_checkpoint
from modeling_merge.processing_merge import resample_to_grid
from modeling_merge.rus.synthetic import make_temporal_rus_benchmark
from modeling_merge.training import MultimodalCollator

TINY = dict(d_model=16, num_blocks=2, num_moe_blocks=1, num_encoder_layers=1, ffn_dim=32, expert_hidden_dim=32,
            num_attention_heads=2, num_feedforward_experts=2, num_synergy_experts=1, num_rus_lags=2)


def _processor(**overrides) -> MergeProcessor:
    fields = dict(modalities={"acc": 3, "eda": 1}, token_grid_hz=4.0, token_grid_length=8, stride=4,
                  patch_sizes={"acc": 8}, normalization={"acc": {"mean": [0.0, 1.0, 2.0], "std": [1.0, 2.0, 4.0]}},
                  channel_names={"eda": ["microsiemens"]})
    return MergeProcessor(**{**fields, **overrides})


def _tiny_model(metadata) -> MergeForSequenceClassification:
    model = MergeForSequenceClassification(MergeConfig(**metadata.merge_config_kwargs(), **TINY)).eval()
    generator = torch.Generator().manual_seed(0)
    pair = torch.rand(len(metadata.modalities), len(metadata.modalities), 2, generator=generator)
    model.set_rus(pair + pair.transpose(0, 1), torch.rand(pair.shape, generator=generator), pair + pair.transpose(0, 1))
    return model


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return build("synthetic", cache_dir=str(tmp_path_factory.mktemp("synthetic")), num_sequences=120, seq_len=12)


def _raw_synthetic_test_sequences(splits) -> list[dict[str, np.ndarray]]:
    """The unnormalised generator output of every test sequence, in the test split's row order."""
    metadata = metadata_of(splits)
    benchmark = make_temporal_rus_benchmark(**planted_structure(metadata)["generator_arguments"])
    indices = [int(unit.removeprefix("seq")) for unit in metadata.split_units["test"]]
    return [{name: values[index] for name, values in benchmark.modalities.items()} for index in indices]


def test_processor_round_trips_through_save_pretrained_and_auto_classes(tmp_path):
    processor = _processor(per_recording_normalize=True)
    processor.save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["preprocessor_config.json", "processing_merge.py"]
    loaded = MergeProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert list(loaded.modalities) == ["acc", "eda"]  # order survives the sorted JSON keys
    assert loaded.window_seconds == 2.0 and loaded.sampling_rates_hz == {"acc": 32.0, "eda": 4.0}
    MergeConfig(modalities=processor.modalities, patch_sizes=processor.patch_sizes, num_labels=2, **TINY).save_pretrained(tmp_path)
    for auto_class in (AutoProcessor, AutoFeatureExtractor):
        assert auto_class.from_pretrained(tmp_path).to_dict() == processor.to_dict()


def test_resampling_agrees_with_the_builders(tmp_path):
    values = np.random.default_rng(0).normal(size=(301, 2))
    for rate, grid, steps, start in ((32.0, 4.0, 9, 0.0), (32.0, 4.0, 9, -1.3), (4.0, 32.0, 70, 0.2), (64.0, 1.0, 4, 0.0)):
        np.testing.assert_array_equal(resample_to_grid(values, rate, grid, steps, start),
                                      builder_resample_to_grid(values, rate, grid, steps, start))


def test_synthetic_raw_sequences_become_exactly_the_built_test_rows(synthetic):
    metadata = metadata_of(synthetic)
    processor = MergeProcessor.from_dataset_metadata(metadata)
    test = synthetic["test"].with_format("numpy")
    for row, raw in enumerate(_raw_synthetic_test_sequences(synthetic)[:20]):
        features = processor(raw, return_tensors="np")
        for name in metadata.modality_names:
            np.testing.assert_array_equal(features["modalities"][name], test[row][name][None])
        assert features["modality_mask"].tolist() == [[True] * len(metadata.modalities)]


def test_checkpoint_and_processor_reproduce_the_models_predictions_on_the_test_windows(synthetic, tmp_path):
    metadata = metadata_of(synthetic)
    model = _tiny_model(metadata)
    model.save_pretrained(tmp_path)
    MergeProcessor.from_dataset_metadata(metadata).save_pretrained(tmp_path)
    test = synthetic["test"].with_format("numpy")
    with torch.no_grad():
        batch = MultimodalCollator(metadata.modality_names)([test[row] for row in range(len(test))])
        expected = model(modalities=batch["modalities"], modality_mask=batch["modality_mask"]).logits.softmax(-1)

    classify = pipeline("time-series-classification", model=str(tmp_path))
    assert isinstance(classify.feature_extractor, MergeProcessor)
    results = classify(_raw_synthetic_test_sequences(synthetic))
    assert [len(windows) for windows in results] == [1] * len(test)
    scores = torch.tensor([[window["scores"][label] for label in metadata.label_names] for (window,) in results])
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=1e-5)
    assert [window["label"] for (window,) in results] == [metadata.label_names[i] for i in expected.argmax(-1).tolist()]
    assert (results[0][0]["start_s"], results[0][0]["end_s"]) == (0.0, 12.0)


def _raw_e4(subject_dir, origin_s: float) -> tuple[dict, dict, dict]:
    """(arrays, rates, start_s from the protocol origin) of one subject's E4 zip, as the builder reads them."""
    zip_path = subject_dir / f"{subject_dir.name}_E4_Data.zip"
    with zipfile.ZipFile(zip_path) as archive:
        recordings = {name: read_e4_csv(archive, member, len(columns), str(zip_path)) for name, (member, columns) in E4_FILES.items()}
    e4_start = min(start for start, _, _ in recordings.values())
    arrays, rates, starts = {}, {}, {}
    for name, (start, rate, values) in recordings.items():
        arrays[name] = drop_implausible(values, *PLAUSIBLE_RANGES[name], name)[0] if name in PLAUSIBLE_RANGES else values
        rates[name], starts[name] = rate, start - (e4_start + origin_s)
    return arrays, rates, starts


@pytest.mark.parametrize("options", [dict(target_rate_hz=None, window=40, stride=20),
                                     dict(window=30, stride=10, per_subject_normalize=True)],
                         ids=["native_rates", "1hz_per_subject"])
def test_wesad_e4_raw_files_become_exactly_the_built_test_windows(shared_data, tmp_path, options):
    data_dir = shared_data / "wesad_e4"
    splits = build("wesad_e4", data_dir=str(data_dir), cache_dir=str(tmp_path), train_subjects=["S2", "S3"],
                   validation_subjects=["S4"], test_subjects=["S5"], **options)
    metadata = metadata_of(splits)
    processor = MergeProcessor.from_dataset_metadata(metadata)
    assert processor.per_recording_normalize == options.get("per_subject_normalize", False)
    arrays, rates, starts = _raw_e4(data_dir / "WESAD" / "S5", metadata.extras["protocol_origins"]["S5"]["origin_s"])
    features = processor(arrays, sampling_rates_hz=rates, start_s=starts, return_tensors="np")
    test = splits["test"].with_format("numpy")[:]  # task "paper" keeps every window of the recording, in order
    for name in metadata.modality_names:
        assert features["modalities"][name].shape == test[name].shape
        np.testing.assert_array_equal(features["modalities"][name], test[name])


def _card(metadata) -> ModelCardInfo:
    return ModelCardInfo(repo_id="org/merge-synthetic", dataset_name="synthetic", task="classification",
                         protocol=metadata.protocol, label_names=metadata.label_names, rus_estimator="multiscale_batch",
                         rus_fingerprint="0" * 8, results=[])


def test_remote_code_checkpoint_applies_its_processor_and_pipeline_without_the_package(synthetic, tmp_path):
    metadata = metadata_of(synthetic)
    model, processor = _tiny_model(metadata), MergeProcessor.from_dataset_metadata(metadata)
    folder = export_checkpoint(model, tmp_path / "checkpoint", _card(metadata), processor=processor)
    raw = _raw_synthetic_test_sequences(synthetic)[0]
    with torch.no_grad():
        expected = model(**processor(raw)).logits
    np.savez(tmp_path / "raw.npz", **raw)
    script = (
        "import sys, numpy, torch\n"
        "from transformers import AutoProcessor, AutoModelForSequenceClassification, pipeline\n"
        f"folder = {str(folder)!r}\n"
        "processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "assert type(processor).__module__.startswith('transformers_modules'), type(processor).__module__\n"
        f"raw = dict(numpy.load({str(tmp_path / 'raw.npz')!r}))\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(**processor(raw)).logits, {str(tmp_path / 'logits.pt')!r})\n"
        "(window,) = pipeline('time-series-classification', model=folder, trust_remote_code=True)(raw)\n"
        "assert type(window['score']) is float and window['end_s'] == 12.0, window\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    finished = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True,
                              text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=1e-5)


def test_long_recordings_are_windowed_with_a_stride_and_absent_modalities_masked():
    processor = _processor()
    rng = np.random.default_rng(0)
    acc, eda = rng.normal(size=(32 * 10, 3)), rng.normal(size=4 * 12)  # 10 s and 12 s; the recording is 10 s
    features = processor({"acc": acc, "eda": eda}, return_tensors="np")
    assert features["modalities"]["acc"].shape == (9, 64, 3) and features["modalities"]["eda"].shape == (9, 8, 1)
    np.testing.assert_allclose(features["modalities"]["acc"][1, :, 1], (acc[32:96, 1] - 1.0) / 2.0, atol=1e-6)  # step 4 = row 32
    np.testing.assert_allclose(features["modalities"]["eda"][2, :, 0], eda[8:16].astype(np.float32))
    assert processor({"acc": acc, "eda": eda}, stride=8, return_tensors="np")["modality_mask"].shape == (5, 2)
    missing = processor({"acc": acc})
    assert missing["modality_mask"].tolist() == [[True, False]] * 9
    assert torch.count_nonzero(missing["modalities"]["eda"]) == 0
    doubled = processor({"acc": np.repeat(acc, 2, axis=0)}, sampling_rates_hz={"acc": 64.0}, return_tensors="np")
    np.testing.assert_allclose(doubled["modalities"]["acc"], features["modalities"]["acc"], atol=1e-6)  # block means


@pytest.mark.parametrize("recording, options, message", [
    ({"acc": np.zeros((320, 2))}, {}, r"modality 'acc' has shape \(320, 2\), expected \(time, 3\)"),
    ({"gyro": np.zeros((320, 3))}, {}, r"unknown modalities \['gyro'\]; the model takes \['acc', 'eda'\]"),
    ({"acc": np.zeros((60, 3))}, {}, r"covers 1.875 s .*shorter than one window of 2 s \(8 steps\)"),
    ({"acc": np.zeros((320, 3))}, {"sampling_rates_hz": {"acc": 0.0}}, r"sampling rate of modality 'acc' must be positive, got 0.0 Hz"),
    ({"acc": np.full((320, 3), np.nan)}, {}, r"modality 'acc' holds 960 NaN"),
    ({"acc": None, "eda": None}, {}, r"holds none of the modalities"),
    ({"acc": np.zeros((320, 3))}, {"stride": 0}, r"stride must be >= 1"),
])
def test_bad_input_is_refused_naming_the_modality_rate_or_shape(recording, options, message):
    with pytest.raises(ValueError, match=message):
        _processor()(recording, **options)


def test_inconsistent_processor_settings_are_refused():
    with pytest.raises(ValueError, match=r"'acc' has sampling rate 30.0 Hz but token_grid_hz 4.0 × patch size 8 = 32.0 Hz"):
        _processor(sampling_rates_hz={"acc": 30.0})
    with pytest.raises(ValueError, match=r"normalization names unknown modalities \['bvp'\]"):
        _processor(normalization={"bvp": {"mean": [0.0], "std": [1.0]}})
    with pytest.raises(ValueError, match="normalization of 'acc' needs 3 means"):
        _processor(normalization={"acc": {"mean": [0.0], "std": [1.0]}})


def test_exported_checkpoint_carries_the_processor_and_its_remote_code(synthetic, tmp_path):
    metadata = metadata_of(synthetic)
    folder = export_checkpoint(_tiny_model(metadata), tmp_path, _card(metadata), processor=MergeProcessor.from_dataset_metadata(metadata))
    assert {"preprocessor_config.json", "processing_merge.py", "modeling_merge.py", "configuration_merge.py"} <= {
        path.name for path in folder.iterdir()}
    assert AutoProcessor.from_pretrained(folder).token_grid_length == metadata.window
    readme = (folder / "README.md").read_text()
    assert "Window: 12 token-grid steps = 12 s at 1 Hz; windows start every 12 steps" in readme
    assert "each channel z-scored with the training split's mean / std" in readme
    assert "| `unique_lag1` | 3 | 1 | 12 |" in readme


def test_readme_snippet_applies_a_checkpoint_to_a_raw_recording(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Applying a checkpoint to new recordings", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    modalities = {"acc": 3, "bvp": 1, "eda": 1, "temp": 1}  # the WESAD-E4 default build: 1 Hz grid, windows of 100 s
    labels = ["baseline", "stress", "amusement"]
    folder = tmp_path / "runs" / "wesad" / "best_model"
    model = MergeForSequenceClassification(MergeConfig(
        modalities=modalities, token_grid_length=100, num_labels=3, id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)}, **TINY))
    model.set_rus(torch.ones(4, 4, 2) - torch.eye(4)[:, :, None], torch.zeros(4, 4, 2), torch.zeros(4, 4, 2))
    model.save_pretrained(folder)
    MergeProcessor(modalities=modalities, token_grid_hz=1.0, token_grid_length=100, stride=25).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert len(namespace["windows"]) == 11 and namespace["windows"][0]["end_s"] == 100.0
    assert namespace["windows"][0]["label"] in labels
    assert namespace["logits"].shape == (21, 3)  # the processor's own stride, 25 steps


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_the_pipeline_reports_each_problem_type_in_its_own_terms(problem_type):
    from types import SimpleNamespace

    from modeling_merge import MergeConfig
    from modeling_merge.processing_merge import TimeSeriesClassificationPipeline

    config = MergeConfig(id2label={0: "calm", 1: "stress"}, problem_type=problem_type)
    pipe = SimpleNamespace(model=SimpleNamespace(config=config), feature_extractor=SimpleNamespace(window_seconds=2.0))
    outputs = {"logits": torch.tensor([[2.0, -1.0], [-3.0, 0.5]]), "window_start_s": np.array([0.0, 1.0])}
    first, second = TimeSeriesClassificationPipeline.postprocess(pipe, outputs)
    assert (first["start_s"], first["end_s"], second["start_s"]) == (0.0, 2.0, 1.0)
    if problem_type == "regression":
        assert first["value"] == [2.0, -1.0] and "label" not in first
    elif problem_type == "multi_label_classification":
        assert first["labels"] == ["calm"] and second["labels"] == ["stress"]
        assert first["scores"]["calm"] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    else:
        assert first["label"] == "calm" and second["label"] == "stress"
        assert sum(first["scores"].values()) == pytest.approx(1.0)
