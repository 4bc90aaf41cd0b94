"""Publishing to the Hub, end to end against a local endpoint speaking the Hub API, with the real client."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_server import LocalHubServer  # noqa: E402

from modeling_merge.hub import push_folder  # noqa: E402


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running local Hub; the client is online for the test (tests default to HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    with LocalHubServer(lifetime_s=120) as server:
        yield server


def test_pushing_again_makes_a_new_commit_and_unknown_repos_fail_clearly(hub, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("v1")
    first = push_folder(folder, "org/m", token="hf_local", endpoint=hub.url)
    (folder / "a.txt").write_text("v2")
    second = push_folder(folder, "org/m", token="hf_local", endpoint=hub.url)
    assert first.oid != second.oid
    latest = hf_hub_download("org/m", "a.txt", endpoint=hub.url, cache_dir=tmp_path / "c")
    pinned = hf_hub_download("org/m", "a.txt", revision=first.oid, endpoint=hub.url, cache_dir=tmp_path / "c")
    assert Path(latest).read_text() == "v2" and Path(pinned).read_text() == "v1"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "a.txt", endpoint=hub.url, cache_dir=tmp_path / "c")


def _tiny_model():
    from merge_tester import MergeModelTester

    tester = MergeModelTester(modalities={"acc": 3, "bvp": 1}, patch_sizes={"bvp": 2}, num_labels=2, num_rus_lags=2)
    return tester.model(num_feedforward_experts=2, num_synergy_experts=1, id2label={0: "calm", 1: "stress"},
                        label2id={"calm": 0, "stress": 1}).eval()


def _card(repo_id="org/merge-tiny"):
    from modeling_merge.hub import ModelCardInfo, ResultRow

    return ModelCardInfo(
        repo_id=repo_id, dataset_name="tiny-wesad", task="2-class sequence classification", protocol="subject split 10/2/3",
        label_names=["calm", "stress"], rus_estimator="multiscale_batch", rus_fingerprint="abc123",
        results=[ResultRow("validation", 0, {"accuracy": 0.5, "macro_f1": 0.25}),
                 ResultRow("test", 0, {"accuracy": 0.75, "macro_f1": 0.625}),
                 ResultRow("test", 1, {"accuracy": 0.8125, "macro_f1": 0.5})],
        routing_figure="routing.png", disabled_aux_losses=["synergy"], limitations=["tiny test model"],
    )


def test_model_card_states_task_data_rus_metrics_figure_limitations_and_citation():
    from huggingface_hub import ModelCard

    from modeling_merge.hub import render_model_card

    text = render_model_card(_card(), _tiny_model().config)
    card = ModelCard(text)
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert {result.metric_value for result in card.data.eval_results} == {0.75, 0.625, 0.8125, 0.5}
    for expected in ("2-class sequence classification", "tiny-wesad", "subject split 10/2/3", "`acc`: 3", "`bvp`: 1",
                     "calm, stress", "`multiscale_batch` over 2 lags", "`abc123`", "| test | 1 | 0.8125 | 0.5000 |",
                     "![Share of each modality", "routing.png", "disabled: synergy", "tiny test model", "2509.25678",
                     'from_pretrained("org/merge-tiny"', "top-2"):
        assert expected in text, expected


@pytest.mark.slow
def test_checkpoint_pushed_to_the_hub_loads_back_by_repo_id_offline(hub, tmp_path, monkeypatch):
    import torch
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from modeling_merge.hub import export_checkpoint

    model = _tiny_model()
    sidecar = tmp_path / "rus.safetensors"
    sidecar.write_bytes(b"sidecar")
    figure = tmp_path / "routing.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    folder = export_checkpoint(model, tmp_path / "export", _card(), sidecar_path=sidecar, figures=[figure])
    push_folder(folder, "org/merge-tiny", token="hf_local", endpoint=hub.url)

    cache = tmp_path / "hub-cache"
    snapshot_download("org/merge-tiny", cache_dir=cache, endpoint=hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    config = AutoConfig.from_pretrained("org/merge-tiny", cache_dir=cache, trust_remote_code=True)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification",
                                    "AutoModelForTokenClassification"}
    loaded = AutoModelForSequenceClassification.from_pretrained("org/merge-tiny", cache_dir=cache, trust_remote_code=True).eval()
    inputs = {"acc": torch.randn(3, 8, 3), "bvp": torch.randn(3, 16, 1)}
    with torch.no_grad():
        expected = model(modalities=inputs).logits
        torch.testing.assert_close(loaded(modalities=inputs).logits, expected)
    assert type(AutoModel.from_pretrained("org/merge-tiny", cache_dir=cache, trust_remote_code=True)).__name__ == "MergeModel"
    readme = Path(snapshot_download("org/merge-tiny", cache_dir=cache)) / "README.md"
    assert "tiny-wesad" in readme.read_text()

    # A process without this package: the class comes from the pushed remote code in the Hub cache, offline.
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"model = AutoModelForSequenceClassification.from_pretrained('org/merge-tiny', cache_dir={str(cache)!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "assert 'modeling_merge' not in sys.modules or not hasattr(sys.modules['modeling_merge'], '__path__')\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(modalities=inputs).logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    finished = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)


def test_an_exported_token_classifier_loads_through_its_own_auto_class_from_remote_code(tmp_path):
    from transformers import AutoModelForTokenClassification

    from merge_tester import MergeModelTester
    from modeling_merge.hub import export_checkpoint
    from modeling_merge.modeling_merge import MergeForTokenClassification

    tester = MergeModelTester(modalities={"acc": 3, "bvp": 1}, patch_sizes={"bvp": 2}, num_labels=3, num_rus_lags=2)
    model = tester.model(MergeForTokenClassification).eval()
    folder = export_checkpoint(model, tmp_path / "export", _card())
    loaded = AutoModelForTokenClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "MergeForTokenClassification"
    assert "custom_pipelines" not in loaded.config.to_dict() or not loaded.config.custom_pipelines
    inputs = tester.inputs(model.config, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(modalities=inputs).logits, model(modalities=inputs).logits)


@pytest.mark.parametrize(
    ("head", "problem_type", "auto_class", "task_type"),
    [("MergeForSequenceClassification", None, "AutoModelForSequenceClassification", "time-series-classification"),
     ("MergeForSequenceClassification", "regression", "AutoModelForSequenceClassification", "time-series-regression"),
     ("MergeForTokenClassification", None, "AutoModelForTokenClassification", "token-classification")],
)
def test_the_model_card_names_the_heads_auto_class_and_task_from_the_saved_config(head, problem_type, auto_class,
                                                                                task_type):
    from modeling_merge.hub import render_model_card

    config = _tiny_model().config
    config.architectures, config.problem_type = [head], problem_type
    card = render_model_card(_card(), config)
    assert f"{auto_class}.from_pretrained" in card and f"type: {task_type}" in card
