"""The `merge-rus` command line: estimate from arrays or a dataset builder, resume, plot."""

import numpy as np
import pytest

from modeling_merge.rus.cli import main
from modeling_merge.rus.sidecar import RusSidecar, fingerprint_arrays
from modeling_merge.rus.synthetic import make_temporal_rus_benchmark


@pytest.fixture(scope="module")
def arrays_file(tmp_path_factory):
    bench = make_temporal_rus_benchmark(num_sequences=400, seq_len=6, seed=0, noise=0.3, num_noise_modalities=0)
    path = tmp_path_factory.mktemp("arrays") / "train.npz"
    np.savez(path, **bench.modalities, label=bench.labels)
    return path, bench


def test_estimate_from_an_npz_writes_a_sidecar_for_exactly_those_arrays(arrays_file, tmp_path, capsys):
    path, bench = arrays_file
    assert main(["estimate", "--arrays", str(path), "--num-lags", "4", "--estimator", "quantized_exact",
                 "--num-bins", "2", "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    sidecar = RusSidecar.load(tmp_path / "out")
    assert sidecar.modality_names == list(bench.modalities)
    assert sidecar.metadata["fingerprint"] == fingerprint_arrays(bench.modalities, bench.labels)
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rus.safetensors"]  # partial file removed


def test_modality_selection_and_order_follow_the_flag(arrays_file, tmp_path):
    path, _ = arrays_file
    main(["estimate", "--arrays", str(path), "--modalities", "synergy_b,synergy_a", "--num-lags", "1",
          "--estimator", "quantized_exact", "--num-bins", "2", "--output", str(tmp_path / "s.safetensors"),
          "--no-progress"])
    sidecar = RusSidecar.load(tmp_path / "s.safetensors")
    assert sidecar.modality_names == ["synergy_b", "synergy_a"]
    assert sidecar.synergy[0, 1, 0] > 0.3


def test_cli_errors_name_the_problem(arrays_file, tmp_path):
    path, _ = arrays_file
    with pytest.raises(SystemExit, match=r"lacks the modalities \['eda'\]"):
        main(["estimate", "--arrays", str(path), "--modalities", "eda", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="exactly one of"):
        main(["estimate", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="no file"):
        main(["estimate", "--arrays", str(tmp_path / "none.npz"), "--output", str(tmp_path)])


def test_estimate_from_the_synthetic_dataset_builder_then_plot(tmp_path):
    pytest.importorskip("dataset_builders")
    out = tmp_path / "rus"
    main(["estimate", "--dataset", "synthetic", "--cache-dir", str(tmp_path / "cache"), "--dataset-config",
          "num_sequences=300", "seq_len=6", "--num-lags", "4", "--estimator", "quantized_exact", "--num-bins", "2",
          "--output", str(out), "--no-progress"])
    sidecar = RusSidecar.load(out)
    assert sidecar.num_lags == 4 and len(sidecar.modality_names) >= 6
    assert sidecar.metadata["split"] == "train"
    main(["plot", str(out), "--output-dir", str(tmp_path / "figures")])
    for name in ("temporal_rus.png", "rus_heatmap.png"):
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
