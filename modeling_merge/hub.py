"""Publishing to the Hugging Face Hub: model checkpoints (with remote code, RUS buffer, rendered model card)
and datasets (parquet splits plus the RUS sidecar beside them).

The README of every pushed checkpoint is rendered from the ``model_card.md`` template (Jinja2, through
``huggingface_hub.ModelCard.from_template``). Uploads go through the real ``huggingface_hub`` client, so
``HF_ENDPOINT`` / ``endpoint=`` can point at any server that speaks the Hub API.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
SIDECAR_FILENAME = "rus.safetensors"
# Class paths inside the flat remote-code folder that `save_pretrained` writes next to the weights.
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_merge.MergeConfig",
    "AutoModel": "modeling_merge.MergeModel",
    "AutoModelForSequenceClassification": "modeling_merge.MergeForSequenceClassification",
}


@dataclass
class ResultRow:
    """One line of the model card's results table: ``metrics`` (name → value in [0, 1]) on ``split`` for ``seed``."""

    split: str
    seed: int
    metrics: dict[str, float]


@dataclass
class ModelCardInfo:
    """Everything the ``model_card.md`` template shows besides the model config."""

    repo_id: str
    dataset_name: str
    task: str
    protocol: str
    label_names: list[str]
    rus_estimator: str
    rus_fingerprint: str
    results: list[ResultRow]
    rus_class_balanced: bool = True
    rus_summary: str = ""
    dataset_repo_id: str | None = None
    selection_metric: str = "macro_f1"
    routing_figure: str | None = None
    disabled_aux_losses: list[str] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)
    license: str = "apache-2.0"


def render_model_card(info: ModelCardInfo, config, template_path: str | Path = MODEL_CARD_TEMPLATE) -> str:
    """The README text for a checkpoint: YAML metadata (license, library, tags, datasets, metric results)
    followed by the template rendered with ``info`` and the model ``config`` (a ``MergeConfig``)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    eval_results = [
        EvalResult(
            task_type="time-series-classification", dataset_type=info.dataset_repo_id or info.dataset_name,
            dataset_name=info.dataset_name, dataset_split=row.split, metric_type=name, metric_value=value,
            metric_name=f"{name} (seed {row.seed})",
        )
        for row in info.results if row.split == "test"
        for name, value in row.metrics.items()
    ]
    card_data = ModelCardData(
        license=info.license, library_name="transformers", tags=["merge", "mixture-of-experts", "multimodal",
                                                                  "time-series", "rus"],
        datasets=[info.dataset_repo_id] if info.dataset_repo_id else None,
        metrics=sorted({name for row in info.results for name in row.metrics}),
        model_name=info.repo_id.split("/")[-1], eval_results=eval_results or None,
    )
    context = asdict(info)
    context["results"] = info.results
    metric_names = sorted({name for row in info.results for name in row.metrics})
    card = ModelCard.from_template(
        card_data, template_path=str(template_path), model_name=info.repo_id.split("/")[-1],
        metric_names=metric_names, modalities=dict(config.modalities),
        router_type=config.router_type, num_experts=config.num_experts, top_k=config.num_experts_per_token,
        num_lags=config.num_rus_lags, **{k: v for k, v in context.items() if k != "license"},
    )
    return str(card)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so a crash leaves no half file."""
    path = Path(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
    return path


def export_checkpoint(
    model,
    folder: str | Path,
    card: ModelCardInfo,
    sidecar_path: str | Path | None = None,
    figures: Iterable[str | Path] = (),
) -> Path:
    """Write a Hub-ready folder: weights + config whose ``auto_map`` lists AutoConfig / AutoModel /
    AutoModelForSequenceClassification, the remote-code modules, the RUS sidecar, figures and ``README.md``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = dict(REMOTE_CODE_AUTO_MAP)
    model.register_for_auto_class("AutoModelForSequenceClassification")
    model.save_pretrained(folder)
    if sidecar_path is not None:
        shutil.copyfile(sidecar_path, folder / SIDECAR_FILENAME)
    for figure in figures:
        shutil.copyfile(figure, folder / Path(figure).name)
    write_text_atomic(folder / "README.md", render_model_card(card, model.config))
    return folder


def push_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str = "model",
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = False,
    commit_message: str = "Upload MERGE checkpoint",
):
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the ``CommitInfo``."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message=commit_message)


def export_dataset(dataset_dict, folder: str | Path, sidecar_path: str | Path | None = None, pretty_name: str = "") -> Path:
    """Write a ``DatasetDict`` the way the Hub serves datasets: ``data/<split>-00000-of-00001.parquet`` (features,
    Array2D and ClassLabel included, travel in the parquet schema), a README whose YAML maps the splits,
    ``dataset_info.json`` (the builder's info, whose description carries the MERGE metadata) and the RUS
    sidecar of the training split as ``rus.safetensors``."""
    from huggingface_hub import DatasetCard, DatasetCardData

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    data_files = []
    for split, dataset in dataset_dict.items():
        relative = f"data/{split}-00000-of-00001.parquet"
        dataset.to_parquet(str(folder / relative))
        data_files.append({"split": split, "path": relative})
    next(iter(dataset_dict.values())).info.write_to_directory(str(folder))
    if sidecar_path is not None:
        shutil.copyfile(sidecar_path, folder / SIDECAR_FILENAME)
    card_data = DatasetCardData(pretty_name=pretty_name or None, tags=["time-series", "multimodal", "merge"],
                                configs=[{"config_name": "default", "data_files": data_files}])
    sidecar_note = (f"`{SIDECAR_FILENAME}` holds the temporal RUS of the training split (see `modeling_merge.rus`)."
                    if sidecar_path is not None else "")
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n# {pretty_name or 'MERGE dataset'}\n\n{sidecar_note}\n")
    write_text_atomic(folder / "README.md", str(card))
    return folder


def download_dataset(repo_id: str, revision: str | None = None, cache_dir: str | Path | None = None,
                     endpoint: str | None = None):
    """Fetch a dataset pushed with :func:`export_dataset` + :func:`push_folder`; returns (``DatasetDict`` with the
    pushed dataset info restored, path of its RUS sidecar or None)."""
    from datasets import DatasetInfo, load_dataset
    from huggingface_hub import snapshot_download

    root = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir, endpoint=endpoint))
    data_files = {path.name.split("-00000-")[0]: str(path) for path in sorted((root / "data").glob("*.parquet"))}
    if not data_files:
        raise FileNotFoundError(f"dataset repo {repo_id} has no data/*.parquet files (found {sorted(os.listdir(root))})")
    dataset_dict = load_dataset("parquet", data_files=data_files, cache_dir=str(cache_dir) if cache_dir else None)
    if (root / "dataset_info.json").exists():
        description = DatasetInfo.from_directory(str(root)).description
        for split in dataset_dict.values():
            split.info.description = description
    sidecar = root / SIDECAR_FILENAME
    return dataset_dict, (sidecar if sidecar.exists() else None)
