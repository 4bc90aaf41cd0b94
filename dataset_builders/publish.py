"""Publishing a built MERGE dataset the way the Hugging Face Hub serves datasets.

`export_for_hub(dataset_dict, folder)` writes

    data/<split>-00000-of-00001.parquet   one file per split (features travel in the parquet schema)
    README.md                             dataset card: YAML with configs, features and splits; the protocol
    merge_metadata.json                   `DatasetMetadata` (modalities, rates, patch sizes, window, labels,
                                          protocol, train-only normalisation)
    rus.safetensors                       the slot for the RUS sidecar of the training split (optional)

`push_to_hub` uploads that folder with `huggingface_hub`; `load_published` reads it back (a local folder
or a Hub dataset repo) with the metadata restored, so `metadata_of` works on the result.

This module is where data meets the RUS sidecar, so unlike the builders it imports ``modeling_merge``: the
sidecar's own checks (``RusSidecar.validate``), its file name and the package's one atomic writer. No builder
imports it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import datasets

from modeling_merge.files import atomic_write
from modeling_merge.rus.sidecar import SIDECAR_FILENAME

from ._common import SPLITS, DatasetMetadata, metadata_of

METADATA_FILENAME = "merge_metadata.json"
DATA_FOLDER = "data"


def check_sidecar(sidecar_path: str | Path, metadata: DatasetMetadata, dataset_dict: datasets.DatasetDict | None = None):
    """The RUS sidecar at ``sidecar_path`` (a ``RusSidecar``) after checking it against the dataset: its modalities
    (names and order) and, given ``dataset_dict``, the fingerprint of the training split it was estimated on
    (``estimator_inputs``: token-grid arrays and labels as stored, a regression target unbinned).
    A mismatch is a ``RusSidecarMismatch`` (a ValueError) saying what differs. The check is the sidecar's own
    (``RusSidecar.validate``), the one path every caller uses."""
    from modeling_merge.rus.sidecar import RusSidecar, estimator_inputs

    sidecar = RusSidecar.load(sidecar_path)
    fingerprint = None if dataset_dict is None else estimator_inputs(dataset_dict["train"], metadata).fingerprint
    return sidecar.validate(modality_names=metadata.modality_names, fingerprint=fingerprint)


def task_tag(metadata: DatasetMetadata) -> str:
    """The card tag naming the task: ``regression``, ``token-classification`` (per-step labels) or
    ``sequence-classification``."""
    if metadata.problem_type == "regression":
        return "regression"
    return "token-classification" if metadata.label_granularity == "step" else "sequence-classification"


def label_description(metadata: DatasetMetadata) -> str:
    """What the ``label`` column holds, by problem type and granularity (a sentence for the dataset card)."""
    names = ", ".join(f"`{name}`" for name in metadata.label_names)
    if metadata.problem_type == "regression":
        return (f"`label` is a float32 regression target ({names}), one value per example; RUS sidecars bin it "
                "into training-split quantiles (recorded in the sidecar's metadata)")
    if metadata.label_granularity == "step":
        return (f"`label` holds one int64 class id per token-grid step ({metadata.window} per example, "
                f"{metadata.token_grid_hz:g} Hz), -100 where a step is unlabelled; classes {names} (ids in this "
                "order, in `merge_metadata.json`) — per-step classification, `MergeForTokenClassification`")
    return f"`label` is a ClassLabel, one class per example: {names} — sequence classification"


def dataset_card(dataset_dict: datasets.DatasetDict, metadata: DatasetMetadata, has_sidecar: bool,
                 pretty_name: str | None = None, license: str | None = None, citation: str | None = None) -> str:
    """README.md text: YAML front matter (configs, dataset_info with features and splits) and the protocol."""
    from huggingface_hub import DatasetCard, DatasetCardData

    card_data = DatasetCardData(
        pretty_name=pretty_name or metadata.name,
        license=license,
        tags=["time-series", "multimodal", "merge", "rus", task_tag(metadata)],
    )
    info = datasets.DatasetInfo(features=next(iter(dataset_dict.values())).features, config_name="default")
    info.splits = datasets.SplitDict()
    for split, dataset in dataset_dict.items():
        info.splits.add(datasets.SplitInfo(name=split, num_bytes=dataset.data.nbytes, num_examples=dataset.num_rows))
    datasets.info.DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    data_files = [{"split": split, "path": f"{DATA_FOLDER}/{split}-*.parquet"} for split in dataset_dict]
    card_data["configs"] = [{"config_name": "default", "data_files": data_files}]
    rows = "\n".join(
        f"| `{name}` | {channels} | {metadata.sampling_rates_hz[name]:g} | {metadata.patch_sizes[name]} | "
        f"{metadata.rows(name)} |"
        for name, channels in metadata.modalities.items()
    )
    normalisation = (
        "every split is z-scored per channel with the training split's mean / std (in `merge_metadata.json`)"
        if metadata.normalization_applied
        else "the values are not normalised"
    )
    sidecar = (
        f"`{SIDECAR_FILENAME}` holds the temporal RUS (redundancy, uniqueness, synergy; bits; [M, M, L] in the "
        "modality order above) estimated on the training split."
        if has_sidecar
        else f"No RUS sidecar yet: estimate it on the training split and add it as `{SIDECAR_FILENAME}`."
    )
    splits = ", ".join(f"{split} {dataset_dict[split].num_rows}" for split in dataset_dict)
    body = f"""# {pretty_name or metadata.name}

A multimodal time-series dataset in the MERGE layout: one `Array2D` column (time × channels, float32) per
modality, `label`, `subject`{", `modality_mask` (presence per modality)" if metadata.has_modality_mask else ""}.

## Modalities (token grid {metadata.token_grid_hz:g} Hz, window {metadata.window} steps, stride {metadata.stride})

| modality | channels | rate (Hz) | patch size | rows per example |
|---|---|---|---|---|
{rows}

Labels: {label_description(metadata)}. Examples: {splits}.

## Protocol

{metadata.protocol}. Normalisation: {normalisation}.

## RUS sidecar

{sidecar}

## Loading

```python
from dataset_builders.publish import load_published
dataset_dict = load_published("<repo id or folder>")
```
"""
    if citation:
        body += f"\n## Citation\n\n```bibtex\n{citation.strip()}\n```\n"
    return str(DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}"))


def export_for_hub(
    dataset_dict: datasets.DatasetDict,
    folder: str | Path,
    sidecar: str | Path | None = None,
    pretty_name: str | None = None,
    license: str | None = None,
    citation: str | None = None,
) -> Path:
    """Write `dataset_dict` (built by a MERGE builder) into `folder` ready for `upload_folder`; returns `folder`.

    Every file is written atomically (`modeling_merge.files.atomic_write`), so an interrupted export leaves no
    half-written file. `sidecar`: a `rus.safetensors` checked against the dataset (`check_sidecar`: modalities
    and the training split's fingerprint), copied beside the data.
    """
    metadata = metadata_of(dataset_dict)
    unknown = sorted(set(dataset_dict) - set(SPLITS))
    if unknown:
        raise ValueError(f"export_for_hub: unexpected split(s) {unknown}; expected {list(SPLITS)}")
    features = next(iter(dataset_dict.values())).features
    for split, dataset in dataset_dict.items():
        if dataset.features != features:
            raise ValueError(f"export_for_hub: split {split!r} has other features than the first split")
    if sidecar is not None:
        check_sidecar(sidecar, metadata, dataset_dict)
    folder = Path(folder)
    for split, dataset in dataset_dict.items():
        atomic_write(folder / DATA_FOLDER / f"{split}-00000-of-00001.parquet", lambda path, d=dataset: d.to_parquet(str(path)))
    atomic_write(folder / METADATA_FILENAME, metadata.to_json())
    if sidecar is not None:
        atomic_write(folder / SIDECAR_FILENAME, lambda path: shutil.copyfile(sidecar, path))
    has_sidecar = (folder / SIDECAR_FILENAME).is_file()
    atomic_write(
        folder / "README.md", dataset_card(dataset_dict, metadata, has_sidecar, pretty_name, license, citation)
    )
    return folder


def push_to_hub(
    dataset_dict: datasets.DatasetDict,
    repo_id: str,
    sidecar: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = False,
    pretty_name: str | None = None,
    license: str | None = None,
    citation: str | None = None,
    commit_message: str = "Upload MERGE dataset",
):
    """Export to a temporary folder and upload it as one commit to the dataset repo `repo_id`; returns the
    `CommitInfo`. `endpoint` (or `HF_ENDPOINT`) picks the Hub server."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory() as folder:
        export_for_hub(dataset_dict, folder, sidecar, pretty_name, license, citation)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset", commit_message=commit_message)


def load_published(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> datasets.DatasetDict:
    """Load an exported folder or a pushed dataset repo as a `DatasetDict` whose info carries the MERGE metadata
    again. The RUS sidecar, if published, is at `published_sidecar(...)`."""
    root = _published_root(path_or_repo_id, revision, cache_dir, endpoint, token)
    metadata_path = root / METADATA_FILENAME
    if not metadata_path.is_file():
        raise FileNotFoundError(f"{path_or_repo_id}: no {METADATA_FILENAME} (not exported by export_for_hub)")
    metadata = DatasetMetadata.from_json(metadata_path.read_text(encoding="utf-8"))
    data_files = {split: str(root / DATA_FOLDER / f"{split}-00000-of-00001.parquet") for split in SPLITS}
    missing = [path for path in data_files.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{path_or_repo_id}: missing split file(s) {missing}")
    loaded = datasets.load_dataset("parquet", data_files=data_files, cache_dir=str(cache_dir) if cache_dir else None)
    for dataset in loaded.values():
        dataset.info.description = metadata.description()
    return loaded


def published_sidecar(path_or_repo_id: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                      endpoint: str | None = None, token: str | None = None) -> Path | None:
    """Local path of the published `rus.safetensors`, or None when the dataset has none."""
    path = _published_root(path_or_repo_id, revision, cache_dir, endpoint, token) / SIDECAR_FILENAME
    return path if path.is_file() else None


def _published_root(path_or_repo_id, revision, cache_dir, endpoint, token) -> Path:
    local = Path(path_or_repo_id).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            str(path_or_repo_id), repo_type="dataset", revision=revision, endpoint=endpoint, token=token,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    )
