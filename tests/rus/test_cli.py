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
    assert main(["estimate", "--arrays", str(path), "--num_lags", "4", "--estimator", "quantized_exact",
                 "--num_bins", "2", "--output", str(tmp_path / "out"), "--no_progress"]) == 0
    sidecar = RusSidecar.load(tmp_path / "out")
    assert sidecar.modality_names == list(bench.modalities)
    assert sidecar.metadata["fingerprint"] == fingerprint_arrays(bench.modalities, bench.labels)
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rus.safetensors"]  # partial file removed


def test_modality_selection_and_order_follow_the_flag(arrays_file, tmp_path):
    path, _ = arrays_file
    main(["estimate", "--arrays", str(path), "--modalities", "synergy_b,synergy_a", "--num_lags", "1",
          "--estimator", "quantized_exact", "--num_bins", "2", "--output", str(tmp_path / "s.safetensors"),
          "--no_progress"])
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


def test_estimate_from_the_synthetic_dataset_builder_then_plot(tmp_path, capsys):
    pytest.importorskip("dataset_builders")
    out = tmp_path / "rus"
    arguments = ["estimate", "--dataset", "synthetic", "--dataset_cache_dir", str(tmp_path / "cache"),
                 "--dataset_options", '{"num_sequences": 300, "seq_len": 6}', "--num_lags", "4",
                 "--estimator", "quantized_exact", "--num_bins", "2", "--output", str(out), "--no_progress"]
    main(arguments)
    sidecar = RusSidecar.load(out)
    assert sidecar.num_lags == 4 and len(sidecar.modality_names) >= 6
    assert sidecar.metadata["split"] == "train"
    main(arguments)  # a second run finds the file, checks it against the data and keeps it
    assert RusSidecar.load(out).content_hash() == sidecar.content_hash()
    assert "kept the existing" in capsys.readouterr().out
    main(["plot", str(out), "--output-dir", str(tmp_path / "figures")])  # the kebab-case spelling still works
    for name in ("temporal_rus.png", "rus_heatmap.png"):
        png = tmp_path / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_existing_output_is_not_overwritten_from_arrays(arrays_file, tmp_path):
    path, _ = arrays_file
    (tmp_path / "rus.safetensors").write_bytes(b"keep")
    with pytest.raises(SystemExit, match="exists; delete it to estimate again"):
        main(["estimate", "--arrays", str(path), "--output", str(tmp_path)])
    assert (tmp_path / "rus.safetensors").read_bytes() == b"keep"


def test_a_typo_in_a_dataset_name_or_its_options_stops_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["estimate", "--dataset", "wesad-e4", "--output", str(tmp_path)])
    assert "invalid choice: 'wesad-e4'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--dataset_options is not JSON"):
        main(["estimate", "--dataset", "synthetic", "--dataset_options", "num_sequences=3", "--output", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["estimate", "plot", "push"])
def test_every_option_is_snake_case_with_help_that_shows_its_default(command, capsys):
    import argparse

    from modeling_merge.rus.cli import build_parser

    subparsers = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    options = [action for action in subparsers.choices[command]._actions if not isinstance(action, argparse._HelpAction)]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in options:
        assert action.help, action.dest
        if action.option_strings:
            assert action.option_strings[0] == "--" + action.dest, action.option_strings  # --snake_case first
        if action.default not in (None, False):
            assert f"(default: {action.default})" in text, action.dest


def test_push_to_a_dataset_repo_that_does_not_exist_creates_it(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from hub_server import LocalHubServer
    from test_sidecar import make_sidecar

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_local")
    path = make_sidecar().save(tmp_path / "rus.safetensors")
    with LocalHubServer(lifetime_s=120) as server:
        main(["push", str(path), "lab/brand-new", "--endpoint", server.url])
        assert "rus.safetensors" in server.hub.get("dataset", "lab/brand-new").commits[-1].files
    assert "pushed" in capsys.readouterr().out


def test_budget_and_readout_options_reach_the_batch_config(monkeypatch):
    from modeling_merge.rus.batch import BatchConfig
    from modeling_merge.rus.cli import batch_config, build_parser

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = build_parser().parse_args(["estimate", "--arrays", "x.npz", "--output", "o", "--pair_block_size", "64",
                                      "--information_readout", "cross_entropy", "--pin_tolerance_bits", "0.5",
                                      "--discriminator_steps", "7", "--alignment_steps", "3", "--batch_size", "32"])
    config = batch_config(args)
    assert (config.pair_block_size, config.information_readout, config.pin_tolerance_bits) == (64, "cross_entropy", 0.5)
    assert (config.discriminator_steps, config.alignment_steps, config.batch_size) == (7, 3, 32)
    assert args.distributed is False
    defaults = batch_config(build_parser().parse_args(["estimate", "--arrays", "x.npz", "--output", "o"]))
    assert defaults == BatchConfig()  # every default is the estimator's own


def test_distributed_is_on_by_default_under_a_multi_process_launcher(monkeypatch):
    from modeling_merge.rus.cli import build_parser

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert build_parser().parse_args(["estimate", "--arrays", "x.npz", "--output", "o"]).distributed is True
    assert build_parser().parse_args(["estimate", "--arrays", "x.npz", "--output", "o",
                                      "--distributed", "false"]).distributed is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["estimate", "--arrays", "x.npz", "--output", "o", "--distributed", "maybe"])


def _estimate_in_process(rank: int, init_file: str, arrays: str, output: str, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        command = ["estimate", "--arrays", arrays, "--num_lags", "2", "--estimator", "quantized_exact", "--num_bins",
                   "2", "--output", output, "--no_progress", "--distributed"]
        main(command)
        try:  # the output exists now: every process stops (none waits in a collective for the others)
            main(command)
            results[rank] = "estimated twice"
        except SystemExit as stop:
            results[rank] = str(stop)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_write_one_sidecar_equal_to_a_single_process_run(arrays_file, tmp_path):
    import torch
    import torch.multiprocessing as mp

    path, _ = arrays_file
    output = tmp_path / "sharded" / "rus.safetensors"
    results = mp.Manager().dict()
    mp.spawn(_estimate_in_process, args=(str(tmp_path / "init"), str(path), str(output), results), nprocs=2, join=True)
    assert all("exists" in results[rank] for rank in (0, 1))
    assert sorted(p.name for p in output.parent.iterdir()) == ["rus.safetensors"]  # no lock, no partial files
    main(["estimate", "--arrays", str(path), "--num_lags", "2", "--estimator", "quantized_exact", "--num_bins", "2",
          "--output", str(tmp_path / "single"), "--no_progress", "--distributed", "false"])
    sharded, single = RusSidecar.load(output), RusSidecar.load(tmp_path / "single")
    for got, expected in zip([sharded.redundancy, sharded.uniqueness, sharded.synergy],
                             [single.redundancy, single.uniqueness, single.synergy]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
