"""A train.py checkpoint applied to raw recordings through its saved processor (the time-series-classification
pipeline) reproduces the run's test predictions and metrics."""

import json

import numpy as np
from transformers import pipeline

from dataset_builders import build, metadata_of
from dataset_builders.synthetic import planted_structure
from modeling_merge.rus.synthetic import make_temporal_rus_benchmark
from modeling_merge.training import classification_metrics


def test_pipeline_on_raw_test_sequences_reproduces_the_runs_test_metrics(reference_run, tmp_path):
    root, results = reference_run
    splits = build(results["dataset"], cache_dir=str(tmp_path), **results["dataset_options"])
    metadata = metadata_of(splits)
    benchmark = make_temporal_rus_benchmark(**planted_structure(metadata)["generator_arguments"])
    indices = [int(unit.removeprefix("seq")) for unit in metadata.split_units["test"]]
    raw = [{name: values[index] for name, values in benchmark.modalities.items()} for index in indices]

    classify = pipeline("time-series-classification", model=str(root / "run" / "best_model"))
    windows = [window for (window,) in classify(raw)]
    scores = np.array([[window["scores"][label] for label in metadata.label_names] for window in windows])
    metrics = classification_metrics(np.log(scores), np.asarray(splits["test"]["label"]))
    recorded = json.loads((root / "run" / "results.json").read_text())["test"]
    assert {"accuracy", "macro_f1"} <= set(recorded) & set(metrics)
    for name in set(recorded) & set(metrics):
        assert np.isclose(metrics[name], recorded[name], atol=1e-6), (name, metrics[name], recorded[name])
