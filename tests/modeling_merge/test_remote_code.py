"""A saved MERGE checkpoint is self-contained: a fresh, isolated Python process that cannot import our package
(no repository root on sys.path, no editable-install finder) loads it with `trust_remote_code=True` and
reproduces the logits."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import save_file

from modeling_merge import MergeConfig, MergeForSequenceClassification

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
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    checkpoint, inputs_file, logits_file = sys.argv[1:4]
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    tensors = load_file(inputs_file)
    mask = tensors.pop("modality_mask")
    logits = model(modalities=tensors, modality_mask=mask).logits
    from safetensors.torch import save_file
    save_file({"logits": logits.detach().contiguous()}, logits_file)
    print(json.dumps({"config": type(config).__module__, "model": type(model).__name__,
                      "base": type(base).__name__, "modalities": config.modality_names}))
    """
)


def isolated_environment(tmp_path: Path) -> dict[str, str]:
    """No PYTHONPATH, offline Hub, HF caches under tmp (dynamic modules land there)."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(
        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        OMP_NUM_THREADS="1",
    )
    return environment


def test_checkpoint_loads_with_trust_remote_code_where_the_package_is_not_importable(tmp_path):
    config = MergeConfig(
        modalities={"wrist_acc": 3, "bvp": 1, "eda": 1}, patch_sizes={"bvp": 4}, num_labels=2, d_model=16,
        num_attention_heads=2, ffn_dim=32, num_encoder_layers=1, num_blocks=2, num_moe_blocks=1,
        num_feedforward_experts=2, num_synergy_experts=1, expert_hidden_dim=16, router_hidden_dim=8,
        router_gru_dim=8, router_attention_dim=8, num_rus_lags=2,
    )
    model = MergeForSequenceClassification(config).eval()
    rus = torch.rand(3, 3, 2)
    model.set_rus(rus + rus.transpose(0, 1), torch.rand(3, 3, 2), rus + rus.transpose(0, 1))
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    assert {"configuration_merge.py", "rus_routing.py", "modeling_merge.py", "model.safetensors"} <= {
        path.name for path in checkpoint.iterdir()
    }
    assert set(json.loads((checkpoint / "config.json").read_text())["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForSequenceClassification"
    }

    inputs = {"wrist_acc": torch.randn(3, 6, 3), "bvp": torch.randn(3, 24, 1), "eda": torch.randn(3, 6, 1)}
    mask = torch.tensor([[True, True, True], [True, False, True], [False, True, True]])
    save_file(dict(inputs, modality_mask=mask), tmp_path / "inputs.safetensors")
    script_dir = tmp_path / "script"
    script_dir.mkdir()
    (script_dir / "load.py").write_text(LOAD_IN_FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, "-I", str(script_dir / "load.py"), str(checkpoint), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "logits.safetensors"), str(REPO_ROOT)],
        cwd=tmp_path, env=isolated_environment(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "MergeForSequenceClassification" and report["base"] == "MergeModel"
    assert report["config"].startswith("transformers_modules.")
    assert report["modalities"] == ["wrist_acc", "bvp", "eda"]
    from safetensors.torch import load_file

    remote_logits = load_file(tmp_path / "logits.safetensors")["logits"]
    # The other process runs on one thread (OMP_NUM_THREADS=1); so does this reference, so the reductions run in
    # the same order and the logits must be bit-identical.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local_logits = model(modalities=inputs, modality_mask=mask).logits.detach()
    finally:
        torch.set_num_threads(threads)
    assert remote_logits.shape == (3, 2)  # the base class's default label count: the label maps must be saved
    assert torch.equal(remote_logits, local_logits)
    assert str(REPO_ROOT) not in result.stderr
