"""A saved MERGE checkpoint is self-contained: a fresh, isolated Python process that cannot import our package
(no repository root on sys.path, no editable-install finder) loads every head with `trust_remote_code=True`
through its Auto class and reproduces the outputs."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modeling_merge import MergeForSequenceClassification, MergeForTokenClassification

from merge_tester import MergeModelTester

REPO_ROOT = Path(__file__).resolve().parents[2]

LOAD_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import json, os, sys
    repo_root = os.path.realpath(sys.argv[4])
    sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != repo_root]
    sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in repr(finder)]
    try:
        import modeling_merge
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_merge must not be importable here")
    from safetensors.torch import load_file, save_file
    import transformers
    from transformers import AutoConfig, AutoModel

    checkpoints, inputs_file, logits_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    tensors = load_file(inputs_file)
    mask = tensors.pop("modality_mask")
    logits, report = {}, {}
    for name, (checkpoint, auto_class) in checkpoints.items():
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
        model = getattr(transformers, auto_class).from_pretrained(checkpoint, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
        logits[name] = model(modalities=tensors, modality_mask=mask).logits.detach().contiguous()
        report[name] = {"config": type(config).__module__, "model": type(model).__name__, "base": type(base).__name__,
                        "modalities": config.modality_names, "problem_type": config.problem_type}
    save_file(logits, logits_file)
    print(json.dumps(report))
    """
)
# name → (head, problem_type, Auto class)
CHECKPOINTS = {
    "single_label": (MergeForSequenceClassification, None, "AutoModelForSequenceClassification"),
    "multi_label": (MergeForSequenceClassification, "multi_label_classification", "AutoModelForSequenceClassification"),
    "regression": (MergeForSequenceClassification, "regression", "AutoModelForSequenceClassification"),
    "per_step": (MergeForTokenClassification, None, "AutoModelForTokenClassification"),
}


def isolated_environment(tmp_path: Path) -> dict[str, str]:
    """No PYTHONPATH, offline Hub, HF caches under tmp (dynamic modules land there)."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(
        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        OMP_NUM_THREADS="1",
    )
    return environment


def test_every_head_loads_with_trust_remote_code_where_the_package_is_not_importable(tmp_path):
    tester = MergeModelTester(modalities={"wrist_acc": 3, "bvp": 1, "eda": 1}, patch_sizes={"bvp": 4}, num_labels=2,
                              num_rus_lags=2)
    models, checkpoints = {}, {}
    for name, (head, problem_type, auto_class) in CHECKPOINTS.items():
        model = tester.model(head, problem_type=problem_type, num_feedforward_experts=2, num_synergy_experts=1,
                             dropout=0.1).eval()
        model.save_pretrained(tmp_path / name)
        models[name], checkpoints[name] = model, (str(tmp_path / name), auto_class)
    saved = {path.name for path in (tmp_path / "per_step").iterdir()}
    assert {"configuration_merge.py", "rus_routing.py", "modeling_merge.py", "model.safetensors"} <= saved
    auto_map = json.loads((tmp_path / "per_step" / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification",
                             "AutoModelForTokenClassification"}

    inputs = tester.inputs(models["single_label"].config, batch=3, tokens=3)
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, True]])
    save_file(dict(inputs, modality_mask=mask), tmp_path / "inputs.safetensors")
    script_dir = tmp_path / "script"
    script_dir.mkdir()
    (script_dir / "load.py").write_text(LOAD_IN_FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, "-I", str(script_dir / "load.py"), json.dumps(checkpoints), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "logits.safetensors"), str(REPO_ROOT)],
        cwd=tmp_path, env=isolated_environment(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    remote_logits = load_file(tmp_path / "logits.safetensors")
    # The other process runs on one thread (OMP_NUM_THREADS=1); so does this reference, so the reductions run in
    # the same order and the logits must be bit-identical.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, model in models.items():
            assert report[name]["model"] == type(model).__name__ and report[name]["base"] == "MergeModel", name
            assert report[name]["config"].startswith("transformers_modules.")
            assert report[name]["modalities"] == ["wrist_acc", "bvp", "eda"]
            assert report[name]["problem_type"] == model.config.problem_type
            local_logits = model(modalities=inputs, modality_mask=mask).logits.detach()
            # 2 labels is the base class's default: the label maps must be saved
            assert remote_logits[name].shape[-1] == 2
            assert torch.equal(remote_logits[name], local_logits), name
    finally:
        torch.set_num_threads(threads)
    assert str(REPO_ROOT) not in result.stderr
