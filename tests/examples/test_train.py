"""examples/train.py end to end on a tiny synthetic known-RUS job: artifacts, bad input, NaN loss, resume, DDP."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "examples"))

import train  # noqa: E402
from tiny_train_job import TINY_DATA, TINY_MODEL, tiny_arguments  # noqa: E402

from modeling_merge.configuration_merge import PAPER_ROUTING  # noqa: E402
from modeling_merge.modeling_merge import MergeForSequenceClassification  # noqa: E402


def run_script(arguments: list[str], launcher: list[str] | None = None, **popen) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = (launcher or [sys.executable]) + [str(REPO_ROOT / "examples" / "train.py"), *arguments]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def test_the_job_writes_every_artifact_and_a_results_table(reference_run, capsys):
    root, results = reference_run
    run = root / "run"
    assert (root / "rus.safetensors").exists()
    assert {"accuracy", "macro_f1", "roc_auc"} <= set(results["test"])
    assert results["best_epoch"] in (1, 2) and results["num_processes"] == 1
    assert set(results["rus"]["planted"]) >= {"unique", "synergistic", "redundant"}
    assert json.loads((run / "results.json").read_text())["test"] == results["test"]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [entry["step"] for entry in log if entry["split"] == "train"]
    assert train_steps == list(range(1, results["steps"] + 1))
    assert [entry["epoch"] for entry in log if entry["split"] == "validation"] == [1, 2]
    assert [entry["split"] for entry in log][-1] == "test"
    for figure in ("routing.png", "temporal_rus.png"):
        assert (run / figure).read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {f"checkpoint-{results['steps'] // 2}",
                                                                 f"checkpoint-{results['steps']}"}
    best = MergeForSequenceClassification.from_pretrained(run / "best_model")
    assert list(best.config.modalities) == list(results["dataset_metadata"]["modalities"])
    assert torch.count_nonzero(best.merge.rus_synergy) > 0  # the estimated RUS travels inside the checkpoint


def test_the_job_reports_the_estimate_and_its_rank_at_every_planted_cell(reference_run, capsys):
    from modeling_merge.rus import RusSidecar

    root, results = reference_run
    sidecar = RusSidecar.load(root / "rus.safetensors")
    names = list(sidecar.metadata["modality_names"])
    planted = results["rus"]["planted"]
    reported = {(row["kind"], row["cell"]): row for row in results["rus"]["planted_estimates"]}
    assert len(reported) == 2 + len(planted["unique"])
    (first, second), lag = planted["redundant"]["pair"], planted["redundant"]["lag"]
    redundant_lag = lag
    redundancy = reported[("redundancy", f"{first}–{second} at lag {lag}")]
    expected = sidecar.redundancy[names.index(first), names.index(second), lag].item()
    assert redundancy["bits"] == pytest.approx(expected)
    pairs = torch.triu_indices(len(names), len(names), offset=1)
    stronger = (sidecar.redundancy[pairs[0], pairs[1]] > expected).sum().item()
    assert redundancy["rank"] == stronger + 1 and redundancy["of"] == pairs.shape[1] * sidecar.redundancy.shape[2]
    for name, lag in planted["unique"].items():
        unique = reported[("uniqueness", f"{name} at lag {lag}")]
        others = [j for j in range(len(names)) if j != names.index(name)]
        assert unique["bits"] == pytest.approx(sidecar.uniqueness[names.index(name), others, lag].max().item())
    train.print_results(results, type("Metadata", (), {"name": "synthetic", "label_granularity": "window"})())
    assert re.search(rf"planted redundancy +{first}–{second} at lag {redundant_lag}: estimated [0-9.]+ bits, rank "
                     rf"{redundancy['rank']} of", capsys.readouterr().out)


def test_a_second_run_in_the_same_folder_is_told_what_to_do(reference_run, tmp_path):
    root, _ = reference_run
    with pytest.raises(FileExistsError, match="has finished .*choose another --output_dir, or delete the folder"):
        train.main(tiny_arguments(root / "run", root / "rus.safetensors"))
    shutil.copytree(root / "run", tmp_path / "run")
    with pytest.raises(FileExistsError, match=r"other settings \(seed: 0 → 1\), so --resume would refuse them: choose "
                                              "another --output_dir"):
        train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--seed", "1"))
    (tmp_path / "run" / "results.json").unlink()  # as if killed before the end
    with pytest.raises(FileExistsError, match="has not finished: pass --resume to continue it"):
        train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors"))


def test_each_dataset_router_and_ablation_gets_its_own_default_output_dir():
    def folder(*arguments):
        (args,) = train.HfArgumentParser(train.TrainArguments).parse_args_into_dataclasses(args=list(arguments))
        return train.check_arguments(args).output_dir

    readme_commands = [(), ("--dataset", "wesad_e4", "--data_dir", "d"), ("--dataset", "physionet2012", "--data_dir", "d"),
                       ("--router_type", "laplace_per_modality"), ("--disable_aux_loss", "synergy"),
                       ("--rus_ablation", "noise"), ("--hub_dataset", "org/wesad-e4/")]
    folders = [folder(*command) for command in readme_commands]
    assert folders[0] == str(Path("outputs/synthetic_rus"))
    assert folders[4] == str(Path("outputs/synthetic_rus_no_synergy")) and folders[6] == str(Path("outputs/wesad-e4_rus"))
    assert len(set(folders)) == len(folders)
    assert folder("--output_dir", "runs/mine") == "runs/mine"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--router_type", "ruz"), ("--disable_aux_loss", "synergie"), ("--selection_metric", "auroc"),
     ("--dataset", "wesad-e4"), ("--report_to", "tensorbord"), ("--rus_estimator", "batch"),
     ("--mixed_precision", "fp8")],
)
def test_a_typo_in_an_option_with_choices_stops_before_any_work(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit):
        train.main(["--output_dir", str(tmp_path / "run"), option, value])
    error = capsys.readouterr().err
    assert f"argument {option}" in error and f"invalid choice: '{value}'" in error
    assert not (tmp_path / "run").exists()


def test_arguments_built_in_code_are_checked_like_the_command_line():
    with pytest.raises(ValueError, match=r"unknown --disable_aux_loss 'synergie'; choose one of \('redundancy'"):
        train.check_arguments(train.TrainArguments(disable_aux_loss=["synergie"]))
    with pytest.raises(ValueError, match="--gradient_accumulation_steps must be ≥ 1, got 0"):
        train.check_arguments(train.TrainArguments(gradient_accumulation_steps=0))


def test_report_to_all_with_no_tracker_installed_logs_nowhere_without_a_warning(monkeypatch, tmp_path):
    class Stop(Exception):
        pass

    created = {}

    def accelerator(**kwargs):  # record the arguments and stop before any work
        created.update(kwargs)
        raise Stop

    monkeypatch.setattr(train, "available_trackers", lambda: [])
    monkeypatch.setattr(train, "Accelerator", accelerator)
    with pytest.raises(Stop):
        train.train(train.TrainArguments(output_dir=str(tmp_path / "run"), report_to="all"))
    assert created["log_with"] is None
    monkeypatch.setattr(train, "available_trackers", lambda: ["tensorboard"])
    with pytest.raises(Stop):
        train.train(train.TrainArguments(output_dir=str(tmp_path / "run"), report_to="all"))
    assert created["log_with"] == "all"


def test_every_option_has_help_text_and_shows_its_default(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in train.fields(train.TrainArguments):
        assert option.metadata.get("help"), option.name
        assert f"--{option.name}" in text
    assert "(default: 6)" in text and "(default: auto)" in text


def test_resume_refuses_changed_settings_by_name(reference_run, tmp_path):
    root, _ = reference_run
    shutil.copytree(root / "run", tmp_path / "run")
    arguments = tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--resume")
    changed_model = arguments[arguments.index("--model_options") + 1].replace('"d_model": 16', '"d_model": 32')
    with pytest.raises(ValueError, match=r"batch_size: 16 → 8; learning_rate: 0\.001 → 0\.01; model_options\.d_model: "
                                         r"16 → 32; seed: 0 → 3\. Resume with the run's settings"):
        train.main([*arguments, "--learning_rate", "0.01", "--batch_size", "8", "--seed", "3",
                    "--model_options", changed_model])
    results = train.main([*arguments, "--keep_checkpoints", "3", "--checkpoint_every_steps", "1"])  # may change
    assert results["seed"] == 0


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process that holds the lock file ``path`` until it is killed."""
    script = ("import sys, time\nfrom modeling_merge.files import exclusive_lock\n"
              "with exclusive_lock(sys.argv[1], 'a test'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_an_output_directory_is_owned_by_one_run_at_a_time(reference_run, tmp_path, capsys):
    root, _ = reference_run
    run = tmp_path / "run"
    holder = hold_lock(run / "run.lock")
    try:
        with pytest.raises(RuntimeError, match=rf"output directory {run} is in use by another run \(pid {holder.pid} on"):
            train.main(tiny_arguments(run, root / "rus.safetensors"))
    finally:
        holder.kill()  # dies without releasing: its record stays, its lock goes with it
        holder.wait()
    assert not (run / "checkpoints").exists()
    results = train.main(tiny_arguments(run, root / "rus.safetensors", "--num_epochs", "1"))
    assert f"taking over output directory {run} from a run that ended without releasing it (pid {holder.pid} " \
        in capsys.readouterr().err
    assert results["steps"] > 0 and not (run / "run.lock").exists()


def test_a_sidecar_being_estimated_by_another_run_is_not_estimated_twice(tmp_path):
    holder = hold_lock(tmp_path / "rus.safetensors.lock")
    try:
        with pytest.raises(RuntimeError, match=rf"RUS sidecar {tmp_path / 'rus.safetensors'} \(being estimated\) is "
                                               rf"in use by another run \(pid {holder.pid} on"):
            train.main(tiny_arguments(tmp_path / "run", tmp_path / "rus.safetensors"))
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "rus.safetensors").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset_options", "{window: 5}"], "--dataset_options is not JSON"),
        (["--model_options", "[16]"], "--model_options must be a JSON object"),
    ],
)
def test_bad_options_are_named_before_training(reference_run, tmp_path, extra, message):
    root, _ = reference_run
    with pytest.raises(ValueError, match=message):
        train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", *extra))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_fresh_run_starts_a_new_log(reference_run, tmp_path):
    # An earlier run that died before its first checkpoint left a log, its last line torn by the kill.
    root, _ = reference_run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 99.0}\n{"split": "tr')
    results = train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--num_epochs", "1"))
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if entry["split"] == "train"] == list(range(1, results["steps"] + 1))
    assert 99.0 not in [entry.get("loss") for entry in log]


def test_a_sidecar_estimated_on_other_data_is_refused(reference_run, tmp_path):
    root, _ = reference_run
    other_data = TINY_DATA.replace('"num_sequences": 96', '"num_sequences": 96, "seed": 7')
    arguments = tiny_arguments(tmp_path / "run", root / "rus.safetensors")
    arguments[arguments.index(TINY_DATA)] = other_data
    with pytest.raises(ValueError, match="fingerprint"):
        train.main(arguments)


def test_rus_ablation_reaches_the_trained_model(reference_run, tmp_path):
    root, _ = reference_run
    results = train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--rus_ablation", "zeros",
                                        "--num_epochs", "1"))
    assert results["rus_ablation"] == "zeros" and results["rus_metadata"]["rus_ablation"] == "zeros"
    best = MergeForSequenceClassification.from_pretrained(tmp_path / "run" / "best_model")
    for kind in ("redundancy", "uniqueness", "synergy"):
        assert torch.count_nonzero(getattr(best.merge, f"rus_{kind}")) == 0, kind
    assert bool(best.merge.rus_is_set)  # explicit zeros, not missing RUS


def test_rus_ablations_replace_the_values_and_keep_the_sidecar_valid(reference_run):
    root, _ = reference_run
    sidecar = train.RusSidecar.load(root / "rus.safetensors")
    assert sidecar.ablated("none", seed=0) is sidecar
    off_diagonal = ~torch.eye(sidecar.num_modalities, dtype=torch.bool)
    for ablation in ("zeros", "noise", "shuffled"):
        ablated = sidecar.ablated(ablation, seed=0)  # RusSidecar re-checks symmetry, signs, diagonal
        assert ablated.metadata["rus_ablation"] == ablation
        for kind in ("redundancy", "uniqueness", "synergy"):
            original, new = getattr(sidecar, kind)[off_diagonal], getattr(ablated, kind)[off_diagonal]
            if ablation == "zeros":
                assert torch.count_nonzero(new) == 0
            else:
                assert not torch.equal(new, original), (ablation, kind)
            if ablation == "shuffled":
                torch.testing.assert_close(new.flatten().sort().values, original.flatten().sort().values)
        if ablation != "zeros":
            assert not torch.equal(ablated.synergy, sidecar.ablated(ablation, seed=1).synergy)
    with pytest.raises(ValueError, match="rus_ablation"):
        sidecar.ablated("random", seed=0)


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose step turns the weights non-finite."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient * float("nan")


def test_nan_loss_keeps_the_last_checkpoint_whose_weights_and_loss_were_finite(reference_run, tmp_path, monkeypatch):
    # Step 3's gradients are NaN, so checkpoint-3 holds NaN weights and step 4's loss is NaN: checkpoint-3 must go
    # and checkpoint-2 (whose weights gave step 3 a finite loss) be named, even with one checkpoint kept.
    root, _ = reference_run
    calls = {"training": 0}
    original_forward = MergeForSequenceClassification.forward

    def forward_with_nan_gradients_at_step_three(self, *args, **kwargs):
        outputs = original_forward(self, *args, **kwargs)
        if self.training:
            calls["training"] += 1
            if calls["training"] == 3:
                outputs.loss = _NanGradient.apply(outputs.loss)
        return outputs

    monkeypatch.setattr(MergeForSequenceClassification, "forward", forward_with_nan_gradients_at_step_three)
    run = tmp_path / "run"
    arguments = tiny_arguments(run, root / "rus.safetensors", "--checkpoint_every_steps", "1", "--keep_checkpoints", "1")
    with pytest.raises(train.NonFiniteLossError, match=r"step 4 .*Last good checkpoint .*checkpoint-2;"):
        train.main(arguments)
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    from safetensors.torch import load_file

    weights = load_file(run / "checkpoints" / "checkpoint-2" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())

    monkeypatch.setattr(MergeForSequenceClassification, "forward", original_forward)
    results = train.main(arguments + ["--resume"])  # resumes from the named checkpoint and finishes
    assert all(math.isfinite(value) for value in results["test"].values())


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_result(reference_run, tmp_path):
    root, reference = reference_run
    arguments = tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--checkpoint_every_steps", "1")
    process = run_script(arguments)
    first_checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-1"
    deadline = time.monotonic() + 240
    while not first_checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert first_checkpoint.exists(), process.stdout.read()[-3000:]
    killed_at = train.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert int(killed_at.name.split("-")[1]) < reference["steps"], "the run finished before it could be killed"

    resumed = run_script(arguments + ["--resume"])
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output[-3000:]
    assert f"resumed from {killed_at}" in output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == reference["steps"]
    assert results["test"] == pytest.approx(reference["test"], abs=1e-6)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if entry["split"] == "train"] == list(range(1, reference["steps"] + 1))
    assert [entry["split"] for entry in log].count("test") == 1
    resumed_model = MergeForSequenceClassification.from_pretrained(tmp_path / "run" / "best_model")
    reference_model = MergeForSequenceClassification.from_pretrained(root / "run" / "best_model")
    for (name, value), expected in zip(resumed_model.state_dict().items(), reference_model.state_dict().values()):
        torch.testing.assert_close(value, expected, msg=name, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_one_process(reference_run, tmp_path):
    root, reference = reference_run
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    process = run_script(tiny_arguments(tmp_path / "ddp", root / "rus.safetensors"), launcher=launcher)
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["num_processes"] == 2
    assert results["steps"] == reference["steps"]  # the global batch is split, not multiplied
    for name in ("accuracy", "macro_f1", "roc_auc"):
        assert results["test"][name] == pytest.approx(reference["test"][name], abs=0.1), name


def test_the_run_records_routing_alignment_beside_the_test_metrics(reference_run):
    root, results = reference_run
    for split in ("validation", "test"):
        shares = results[split]["routing_expert_share_min"], results[split]["routing_expert_share_max"]
        assert 0.0 <= shares[0] <= shares[1] <= 1.0, split
        assert 0.0 <= results[split]["routing_synergy_share_synergistic"] <= 1.0
    log = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("routing_expert_share_min" in entry for entry in log if entry["split"] == "validation")


def test_collapsed_routing_is_reported_as_a_warning(reference_run, tmp_path, capsys):
    root, _ = reference_run
    paper_routing = json.loads(TINY_MODEL) | PAPER_ROUTING | {"num_experts_per_token": 1}
    arguments = tiny_arguments(tmp_path / "run", root / "rus.safetensors")
    arguments[arguments.index("--model_options") + 1] = json.dumps(paper_routing)
    results = train.main(arguments)
    assert results["test"]["routing_expert_share_max"] > 0.6  # the paper's routing collapses here too
    assert "WARNING: routing is unbalanced" in capsys.readouterr().out


@pytest.mark.slow
def test_the_readme_ddp_command_trains_the_default_model(reference_run, tmp_path):
    """README: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/train.py` with train.py's
    default model (8 experts, 2 of them synergy experts) — it crashed at step 4 when the router collapsed."""
    root, _ = reference_run
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    arguments = ["--output_dir", str(tmp_path / "ddp"), "--rus_sidecar", str(root / "rus.safetensors"),
                 "--dataset_options", TINY_DATA, "--num_epochs", "2", "--report_to", "none", "--cpu"]
    process = run_script(arguments, launcher=launcher)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["num_processes"] == 2 and results["steps"] >= 6
    assert MergeForSequenceClassification.from_pretrained(tmp_path / "ddp" / "best_model").config.num_experts == 8


def test_a_runs_outputs_are_readable_by_the_group_under_the_users_umask(reference_run, tmp_path):
    root, _ = reference_run
    previous = os.umask(0o027)
    try:
        train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--num_epochs", "1"))
    finally:
        os.umask(previous)
    paths = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    assert any(path.name == "results.json" for path in paths) and any(path.name == "best_model" for path in paths)
    for path in paths:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o040 and not mode & 0o007, (path, oct(mode))  # group reads, others get nothing (umask 027)
        if path.is_dir():
            assert mode & 0o010, (path, oct(mode))


def test_leftovers_of_an_interrupted_save_are_removed_on_the_next_start(reference_run, tmp_path, capsys):
    root, _ = reference_run
    shutil.copytree(root / "run", tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    leftovers = [tmp_path / "run" / f".results.json.x1{train.TEMPORARY_SUFFIX}",
                 tmp_path / "run" / f".best_model.x2{train.TEMPORARY_SUFFIX}", checkpoints / f".checkpoint-9{train.TEMPORARY_SUFFIX}"]
    leftovers[0].write_text("{half")
    for folder in leftovers[1:]:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train.main(tiny_arguments(tmp_path / "run", root / "rus.safetensors", "--resume"))
    assert not any(path.exists() for path in leftovers)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    out = capsys.readouterr().out
    assert all(f"removed {path}, left by an interrupted save" in out for path in leftovers)


def _unfinished_copy(root: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A copy of the reference run without its results.json; returns the folder and its checkpoints, oldest first."""
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "results.json").unlink()
    return run, [path for _, path in train.checkpoints_by_step(run / "checkpoints")]


def test_resume_from_a_damaged_checkpoint_falls_back_to_the_previous_intact_one(reference_run, tmp_path, capsys):
    root, reference = reference_run
    run, (older, newest) = _unfinished_copy(root, tmp_path)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    results = train.main(tiny_arguments(run, root / "rus.safetensors", "--resume"))
    out = capsys.readouterr().out
    assert f"--resume: {newest} is damaged (model.safetensors (" in out
    assert f"resuming from the previous intact checkpoint {older} instead" in out and f"resumed from {older}" in out
    assert results["steps"] == reference["steps"]
    assert results["test"] == pytest.approx(reference["test"], abs=1e-6)  # still exact


def test_a_corrupt_random_state_file_is_an_error_naming_it_not_a_silent_divergence(reference_run, tmp_path):
    root, _ = reference_run
    run, checkpoints = _unfinished_copy(root, tmp_path)
    for checkpoint in checkpoints:
        (checkpoint / "random_states_0.pkl").write_bytes(b"\x80\x04garbage")  # Accelerate would skip it silently
    with pytest.raises(ValueError, match=r"--resume: no intact checkpoint in .*random_states_0\.pkl \(.*Restore the "
                                         "files, or start a new run in another --output_dir") as error:
        train.main(tiny_arguments(run, root / "rus.safetensors", "--resume"))
    assert all(str(checkpoint) in str(error.value) for checkpoint in checkpoints)


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    # Dense model, dropout 0, no auxiliary losses: 2 passes of 8 then one step == one pass of 16, step by step.
    common = ["--router_type", "dense", "--disable_aux_loss", "redundancy", "uniqueness", "synergy", "load_balance",
              "--limit_examples", "64", "--num_epochs", "1", "--dataset_options",
              TINY_DATA.replace('"num_sequences": 96', '"num_sequences": 200')]
    sidecar = tmp_path / "rus.safetensors"
    large = train.main(tiny_arguments(tmp_path / "large", sidecar, *common))
    accumulated = train.main(tiny_arguments(tmp_path / "accumulated", sidecar, *common, "--batch_size", "8",
                                            "--gradient_accumulation_steps", "2"))
    assert large["steps"] == accumulated["steps"] == 4

    def losses(run):
        log = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(entry["step"], entry["loss"], entry["lr"]) for entry in log if entry["split"] == "train"]

    for (step, loss, lr), (step_acc, loss_acc, lr_acc) in zip(losses("large"), losses("accumulated"), strict=True):
        assert (step, lr) == (step_acc, lr_acc)
        assert loss_acc == pytest.approx(loss, abs=1e-5)
    models = [MergeForSequenceClassification.from_pretrained(tmp_path / run / "best_model") for run in ("large", "accumulated")]
    for (name, value), other in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(value, other, atol=1e-5, rtol=1e-4, msg=name)


def test_the_rus_budget_options_reach_the_estimator_config():
    from types import SimpleNamespace

    from modeling_merge.rus import BatchConfig

    (args,) = train.HfArgumentParser(train.TrainArguments).parse_args_into_dataclasses(args=[
        "--rus_discriminator_steps", "7", "--rus_alignment_steps", "3", "--rus_batch_size", "32",
        "--rus_pair_block_size", "16", "--rus_information_readout", "cross_entropy", "--seed", "5"])
    assert train.rus_config(args) == BatchConfig(discriminator_steps=7, alignment_steps=3, batch_size=32,
                                                 pair_block_size=16, information_readout="cross_entropy", seed=5)
    (defaults,) = train.HfArgumentParser(train.TrainArguments).parse_args_into_dataclasses(args=[])
    assert train.rus_config(defaults) == BatchConfig()
    # left at their defaults, the new options are not recorded: runs started before they existed still resume
    recorded = set(train.run_settings(defaults, SimpleNamespace(num_processes=1), SimpleNamespace(metric="macro_f1")))
    assert not recorded & set(train.ADDED_SETTINGS)
    assert "rus_batch_size" in train.run_settings(args, SimpleNamespace(num_processes=1), SimpleNamespace(metric="macro_f1"))


def test_a_router_that_does_not_read_rus_never_estimates_it(tmp_path, monkeypatch):
    from modeling_merge.rus import RusSidecar, temporal

    def refuse(*args, **kwargs):
        raise AssertionError("RUS estimated for a router that does not read it")

    monkeypatch.setattr(temporal, "estimate_temporal_rus", refuse)
    monkeypatch.setattr(RusSidecar, "for_dataset", refuse)
    sidecar = tmp_path / "rus.safetensors"
    results = train.main(tiny_arguments(tmp_path / "run", sidecar, "--router_type", "dense", "--num_epochs", "1",
                                        "--limit_examples", "64"))
    assert not sidecar.exists() and not list(tmp_path.glob("rus.safetensors*"))
    assert results["rus_metadata"] is None and results["rus"] == {} and results["artifacts"]["rus_sidecar"] is None
    assert set(results["test"]) >= {"accuracy", "macro_f1"}
