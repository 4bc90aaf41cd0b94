"""Publishing MERGE checkpoints to the Hugging Face Hub: weights + config with ``auto_map`` for remote code, the
remote-code modules, the RUS sidecar and a README rendered from the ``model_card.md`` template. (Datasets and
their sidecar are published by ``dataset_builders.publish``.)

The README is rendered with Jinja2 through ``huggingface_hub.ModelCard.from_template``. Uploads go through the real ``huggingface_hub`` client, so
``HF_ENDPOINT`` / ``endpoint=`` can point at any server that speaks the Hub API.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path

from .configuration_merge import AUTO_MAP
from .files import atomic_write
from .modeling_merge import MergeForSequenceClassification
from .processing_merge import PIPELINE_TASK
from .rus.sidecar import SIDECAR_FILENAME

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"


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


def card_head(config) -> dict[str, Any]:
    """What the card says about the head, from the saved config: per-step or window outputs, regression or classes,
    the Auto class to load it with and the Hub task type of its results."""
    per_step = (config.architectures or [""])[0] == "MergeForTokenClassification"
    regression = config.problem_type == "regression"
    task_type = "token-classification" if per_step else "time-series-regression" if regression \
        else "time-series-classification"
    auto_class = "AutoModelForTokenClassification" if per_step else "AutoModelForSequenceClassification"
    return {"per_step": per_step, "regression": regression, "task_type": task_type, "auto_class": auto_class}


def render_model_card(info: ModelCardInfo, config, template_path: str | Path = MODEL_CARD_TEMPLATE,
                      processor=None) -> str:
    """The README text for a checkpoint: YAML metadata (license, library, tags, datasets, metric results)
    followed by the template rendered with ``info``, the model ``config`` (a ``MergeConfig``) and, given a
    ``MergeProcessor``, the inputs it expects (window, rates, rows, normalisation)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    head = card_head(config)
    eval_results = [
        EvalResult(
            task_type=head["task_type"], dataset_type=info.dataset_repo_id or info.dataset_name,
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
        num_lags=config.num_rus_lags, processor=processor, **head,
        **{k: v for k, v in context.items() if k != "license"},
    )
    return str(card)


def export_checkpoint(
    model,
    folder: str | Path,
    card: ModelCardInfo,
    sidecar_path: str | Path | None = None,
    figures: Iterable[str | Path] = (),
    processor=None,
) -> Path:
    """Write a Hub-ready folder: weights + config whose ``auto_map`` lists every Auto class of the package (each head
    under its own: sequence or token classification), the remote-code modules, the RUS sidecar, figures,
    ``README.md`` and, given a ``MergeProcessor``, its ``preprocessor_config.json`` and ``processing_merge.py``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.auto_map = dict(AUTO_MAP)
    if processor is not None and isinstance(model, MergeForSequenceClassification):
        # `pipeline(repo_id, trust_remote_code=True)` finds the task in config.json (window-level heads only)
        model.config.custom_pipelines = {PIPELINE_TASK: {"impl": "processing_merge.TimeSeriesClassificationPipeline",
                                                         "pt": ["AutoModelForSequenceClassification"], "type": "multimodal"}}
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    if sidecar_path is not None:
        shutil.copyfile(sidecar_path, folder / SIDECAR_FILENAME)
    for figure in figures:
        shutil.copyfile(figure, folder / Path(figure).name)
    atomic_write(folder / "README.md", render_model_card(card, model.config, processor=processor))
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
