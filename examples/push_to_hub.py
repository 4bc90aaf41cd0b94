"""Publish a trained MERGE run to the Hugging Face Hub, and optionally its dataset with the RUS sidecar.

    python examples/push_to_hub.py --run_dir outputs/synthetic_rus --repo_id org/merge-synthetic
    python examples/push_to_hub.py --run_dir runs/seed0 runs/seed1 --repo_id org/merge-wesad          # one row per seed
    python examples/push_to_hub.py --run_dir outputs/synthetic_rus --repo_id org/merge-synthetic \
        --dataset_repo_id org/synthetic-rus --dataset synthetic                                       # + dataset and sidecar
    python examples/push_to_hub.py --run_dir outputs/synthetic_rus --repo_id org/merge-synthetic --export_dir export
                                                         # dry run: write what would be uploaded, no network

The first ``--run_dir`` (written by ``examples/train.py``) provides the checkpoint (``best_model/``), the RUS sidecar
(refused unless its content hash is the one the run recorded) and the figures; every run's ``results.json`` adds its
validation and test rows to the model card, which names the task (sequence classification, per-step token
classification or regression, from the run's ``results.json``). The model then loads by repo id through the Auto
class of its head: ``AutoModelForSequenceClassification.from_pretrained(repo_id, trust_remote_code=True)`` (one
class or value per window), ``AutoModelForTokenClassification`` for per-step labels.
Set ``HF_ENDPOINT`` to publish to another Hub-compatible server; the token comes from ``--token`` or the usual
``HF_TOKEN`` / ``hf auth login``. ``--export_dir`` writes the model folder (and, with ``--dataset_repo_id``, the
dataset folder under ``<export_dir>/dataset``) exactly as it would be uploaded, without touching the network.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataset_builders  # noqa: E402
from modeling_merge.hub import ModelCardInfo, ResultRow, export_checkpoint, push_folder  # noqa: E402
from modeling_merge.modeling_merge import MergeForSequenceClassification, MergeForTokenClassification  # noqa: E402
from modeling_merge.processing_merge import MergeProcessor  # noqa: E402
from modeling_merge.rus.sidecar import RusSidecar  # noqa: E402


@dataclass
class PushArguments:
    repo_id: str = field(metadata={"help": "model repo, e.g. org/merge-pamap2"})
    run_dir: list[str] = field(default_factory=lambda: ["outputs/synthetic_rus"],
                               metadata={"help": "train.py output folders, one per seed (the first is pushed)"})
    dataset_repo_id: str | None = field(default=None, metadata={"help": "also push the dataset + RUS sidecar to this dataset repo"})
    dataset: str | None = field(default=None, metadata={"help": "builder to rebuild for --dataset_repo_id (as in train.py)"})
    data_dir: str | None = field(default=None, metadata={"help": "raw files of --dataset (as in train.py)"})
    dataset_options: str = field(default="{}", metadata={"help": "JSON builder options of --dataset (as in train.py)"})
    export_dir: str | None = field(default=None, metadata={"help": "dry run: write the folders that would be uploaded "
                                                                    "here, and upload nothing"})
    token: str | None = field(default=None, metadata={"help": "Hub token (None: HF_TOKEN or the stored login)"})
    private: bool = field(default=False, metadata={"help": "create the repos private"})
    commit_message: str = field(default="Upload MERGE checkpoint", metadata={"help": "message of the model commit"})


def read_run(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a finished examples/train.py run")
    return json.loads(path.read_text())


def check_sidecar(run_dir: Path, run: dict) -> Path:
    """The run's RUS sidecar file, refused when it is not the one the run loaded (another run rewrote it); None
    for a run without one (a router that reads no RUS, trained where no sidecar existed)."""
    if run["artifacts"].get("rus_sidecar") is None:
        return None
    path = Path(run["artifacts"]["rus_sidecar"])
    recorded, current = run["artifacts"].get("rus_sidecar_hash"), RusSidecar.load(path).content_hash()
    if recorded != current:
        raise ValueError(f"{path} is not the RUS sidecar the run in {run_dir} trained with (content {current}, "
                         f"{run_dir / 'results.json'} records {recorded}): another run wrote it since. Publish "
                         "with the run's own sidecar, or retrain with this one.")
    return path


HEADS = {head.__name__: head for head in (MergeForSequenceClassification, MergeForTokenClassification)}


def task_description(dataset: dict) -> str:
    """The model card's task, from a run's ``dataset_metadata`` (runs before per-step labels and regression existed
    are sequence classification)."""
    labels = dataset["label_names"]
    if dataset.get("problem_type") == "regression":
        return f"regression of {', '.join(labels)}"
    if dataset.get("label_granularity") == "step":
        return f"{len(labels)}-class per-step classification (token classification)"
    return f"{len(labels)}-class sequence classification"


def card_info(args: PushArguments, runs: list[dict]) -> ModelCardInfo:
    first = runs[0]
    dataset, rus = first["dataset_metadata"], first["rus_metadata"] or {"estimator": "none (no RUS sidecar)",
                                                                          "fingerprint": "none"}
    rows = [ResultRow(split, run["seed"], run[split]) for run in runs for split in ("validation", "test")]
    strongest = [f"{kind.removeprefix('estimated_top_')}: {'–'.join(found['pair'])} at lag {found['lag']} ({found['bits']:.3f} bits)"
                 for kind, found in first["rus"].items() if kind.startswith("estimated_top_")]
    return ModelCardInfo(
        repo_id=args.repo_id, dataset_name=dataset["name"], task=task_description(dataset),
        protocol=dataset["protocol"], label_names=dataset["label_names"], rus_estimator=rus.get("estimator", "unknown"),
        rus_fingerprint=rus.get("fingerprint", "unknown"), rus_class_balanced=bool(rus.get("class_balanced", False)),
        results=rows, rus_summary="; ".join(strongest), dataset_repo_id=args.dataset_repo_id,
        selection_metric=first["selection_metric"],
        routing_figure="routing.png" if (Path(args.run_dir[0]) / "routing.png").exists() else None,
        disabled_aux_losses=first["disabled_aux_losses"],
    )


def push_dataset(args: PushArguments, sidecar: Path) -> str:
    """Rebuild the dataset the run trained on and publish it with its RUS sidecar (``dataset_builders.publish``), or
    with ``--export_dir`` write it to ``<export_dir>/dataset``; returns the commit id or the folder."""
    from dataset_builders.publish import export_for_hub, push_to_hub

    if not args.dataset:
        raise ValueError("--dataset_repo_id needs --dataset (and --data_dir for real benchmarks) to rebuild the dataset")
    with tempfile.TemporaryDirectory() as cache:
        splits = dataset_builders.build(args.dataset, data_dir=args.data_dir, cache_dir=cache, **json.loads(args.dataset_options))
        if args.export_dir:
            folder = export_for_hub(splits, Path(args.export_dir) / "dataset", sidecar=sidecar)
            print(f"dataset for datasets/{args.dataset_repo_id} written to {folder} (not uploaded)")
            return str(folder)
        with hub_errors_explained():
            commit = push_to_hub(splits, args.dataset_repo_id, sidecar=sidecar, token=args.token, private=args.private,
                                 commit_message="Upload dataset and RUS sidecar")
    print(f"dataset pushed: {commit.commit_url}")
    return commit.oid


@contextmanager
def hub_errors_explained():
    """A Hub that cannot be reached (offline mode, no network, a wrong endpoint) is a short error saying so and
    naming ``--export_dir``, not a long traceback."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        yield
    except Exception as error:  # the HTTP client's transport errors (httpx / requests, by class name)
        unreachable = {"TransportError", "ConnectionError"} & {kind.__name__ for kind in type(error).__mro__}
        if not (isinstance(error, OfflineModeIsEnabled) or unreachable):
            raise
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise SystemExit(f"could not reach the Hub at {endpoint} ({type(error).__name__}: {error}). Check the network "
                         "(HF_HUB_OFFLINE must be unset to upload), or write the files without uploading with "
                         "--export_dir DIR.") from None


def main(argv: list[str] | None = None) -> str:
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
    runs = [read_run(Path(run_dir)) for run_dir in args.run_dir]
    run_dir = Path(args.run_dir[0])
    sidecar = check_sidecar(run_dir, runs[0])
    if sidecar is None and args.dataset_repo_id:
        raise ValueError(f"{run_dir} has no RUS sidecar (router {runs[0]['router_type']} reads none), so there is "
                         "none to publish with the dataset: drop --dataset_repo_id, or publish from a rus run")
    head = runs[0].get("head", MergeForSequenceClassification.__name__)  # runs before the token head: sequence
    if head not in HEADS:
        raise ValueError(f"{run_dir / 'results.json'} names the head {head!r}; known heads: {sorted(HEADS)}")
    model = HEADS[head].from_pretrained(run_dir / "best_model")
    has_processor = (run_dir / "best_model" / "preprocessor_config.json").is_file()  # runs before the processor had none
    processor = MergeProcessor.from_pretrained(run_dir / "best_model") if has_processor else None
    figures = [path for path in (run_dir / "routing.png", run_dir / "temporal_rus.png") if path.exists()]
    card = card_info(args, runs)
    if args.export_dir:
        folder = export_checkpoint(model, Path(args.export_dir) / "model", card, sidecar_path=sidecar, figures=figures,
                                   processor=processor)
        print(f"model for {args.repo_id} written to {folder} (not uploaded): "
              + ", ".join(sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())))
        result = str(folder)
    else:
        with tempfile.TemporaryDirectory() as folder, hub_errors_explained():
            export_checkpoint(model, folder, card, sidecar_path=sidecar, figures=figures, processor=processor)
            commit = push_folder(folder, args.repo_id, token=args.token, private=args.private,
                                 commit_message=args.commit_message)
        print(f"model pushed: {commit.commit_url}")
        result = commit.oid
    if args.dataset_repo_id:
        push_dataset(args, sidecar)
    return result


if __name__ == "__main__":
    main()
