"""The RUS sidecar ``rus.safetensors``: temporal RUS of a dataset's training split, cached next to the data.

Tensors (float32, bits): ``redundancy`` [M, M, L] and ``synergy`` [M, M, L] (symmetric, zero diagonals),
``uniqueness`` [M, M, L] (entry [i, j, τ] = U_i within the pair (i, j), zero diagonal). The safetensors
header holds the metadata as JSON under the key ``merge_rus``. On the Hub the file sits in the dataset
repo beside the data, and the dataset card's YAML key ``merge_rus`` points to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from ..files import atomic_write, exclusive_lock, remove_leftovers

__all__ = ["FORMAT_VERSION", "SIDECAR_FILENAME", "CARD_KEY", "REGRESSION_TARGET_BINS", "RUS_ABLATIONS", "RusSidecar",
           "RusSidecarMismatch", "EstimatorInputs", "check_modalities_match", "estimator_inputs", "fingerprint_arrays",
           "modality_differences", "recorded_target_bins", "estimation_lock"]

FORMAT_VERSION = 1
SIDECAR_FILENAME = "rus.safetensors"
CARD_KEY = "merge_rus"
_REQUIRED_METADATA = ("modality_names", "lags_steps", "units", "estimator", "estimator_settings", "split",
                      "class_balanced", "fingerprint", "format_version")
_TENSOR_NAMES = ("redundancy", "uniqueness", "synergy")
RUS_ABLATIONS = ("none", "zeros", "noise", "shuffled")
REGRESSION_TARGET_BINS = 4  # quantile bins of a regression target on the training split: the estimators' classes


class RusSidecarMismatch(ValueError):
    """A sidecar does not belong to the dataset or model it is used with; the message says what differs."""


def fingerprint_arrays(modalities: Mapping[str, np.ndarray], labels: np.ndarray) -> str:
    """SHA-256 content hash of a split (modality names, order, shapes, dtypes, values, labels) → ``sha256:…``."""
    digest = hashlib.sha256()
    for name, values in [*modalities.items(), ("label", labels)]:
        values = np.ascontiguousarray(values)
        digest.update(json.dumps([name, list(values.shape), values.dtype.str]).encode())
        digest.update(values.tobytes())
    return f"sha256:{digest.hexdigest()}"


def modality_differences(found: Mapping[str, int] | Sequence[str], expected: Mapping[str, int] | Sequence[str],
                         found_as: str = "it", expected_as: str = "the data") -> list[str]:
    """What differs between two modality lists (names in order) or mappings (name → channels, in order), one
    phrase per kind of difference (missing / extra names, channel counts, order); empty when they agree."""
    found_names, expected_names = list(found), list(expected)
    missing = [name for name in expected_names if name not in found_names]
    extra = [name for name in found_names if name not in expected_names]
    differences = []
    if missing or extra:
        differences.append("modalities differ: " + "; ".join(
            part for part in (f"{found_as} lacks: {missing}" if missing else "",
                              f"only {found_as} has: {extra}" if extra else "") if part))
    if isinstance(found, Mapping) and isinstance(expected, Mapping):
        channels = [f"{name} ({found[name]}, {expected[name]})" for name in expected_names
                    if name in found and found[name] != expected[name]]
        if channels:
            differences.append(f"channels differ ({found_as}, {expected_as}): " + ", ".join(channels))
    if not differences and found_names != expected_names:
        differences.append(f"modality order differs: {found_as} {found_names}, {expected_as} {expected_names}")
    return differences


def check_modalities_match(found: Mapping[str, int] | Sequence[str], expected: Mapping[str, int] | Sequence[str],
                           what: str) -> None:
    """Raise :class:`RusSidecarMismatch` when ``what`` (a checkpoint path, a sidecar) was made for other modalities,
    channel counts or another modality order than the data (``expected``), naming every difference."""
    differences = modality_differences(found, expected)
    if differences:
        raise RusSidecarMismatch(f"{what} does not match the dataset: " + "; ".join(differences))


class EstimatorInputs(NamedTuple):
    """A split as the RUS estimators see it (see :func:`estimator_inputs`)."""

    modalities: dict[str, np.ndarray]  # name → (N, T, C_m) on the token grid
    labels: np.ndarray  # (N,) or (N, T) class ids, -100 = unlabelled step
    mask: np.ndarray | None  # (N, M) presence
    binning: dict | None  # a regression target's quantile bins
    fingerprint: str  # of the split's token-grid arrays and its labels as stored (raw targets for regression)


def estimator_inputs(split, metadata, target_bins: int = REGRESSION_TARGET_BINS) -> EstimatorInputs:
    """A split as the RUS estimators see it: modalities pooled onto the token grid of ``metadata``, labels, the
    presence mask, the target binning and the split's fingerprint (the one a sidecar records).

    Labels are class ids (N,) per window, or (N, T) per step with -100 for unlabelled steps (the estimators drop
    those). A regression target (float (N,)) becomes the ids 0..K-1 of quantile bins: the inner edges are the
    1/k, …, (k-1)/k quantiles of this split's targets with k = ``target_bins``; equal edges and empty bins are
    merged (tied targets may leave K < k bins, at least 2: where ties fill every quantile the split is at the
    median); a target with a single value is an error. The binning is
    ``{"requested": k, "num_bins": K, "edges": [...], "rule": ...}``."""
    from .temporal import arrays_from_dataset

    modalities, labels, mask = arrays_from_dataset(split, metadata.modality_names, metadata.patch_sizes)
    fingerprint = fingerprint_arrays(modalities, labels)
    if metadata.problem_type != "regression":
        return EstimatorInputs(modalities, labels, mask, None, fingerprint)
    if target_bins < 2:
        raise ValueError(f"target_bins must be ≥ 2 (the RUS estimators need two classes), got {target_bins}")
    targets = labels.astype(np.float64)
    edges = np.unique(np.quantile(targets, np.linspace(0, 1, target_bins + 1)[1:-1]))
    counts = np.bincount(np.digitize(targets, edges), minlength=edges.size + 1)
    edges = edges[counts[:-1] > 0]  # an empty bin (ties at an edge) merges into the next; the last holds the max
    if np.unique(targets).size < 2:
        raise ValueError(f"the regression target {metadata.label_names} takes the single value {targets[0]:g} on "
                         "this split: its RUS (information about the target) is undefined")
    if edges.size == 0:  # ties filled every quantile: split at the median (the next value above it, if any)
        median = np.median(targets)
        edges = np.asarray([targets[targets > median].min() if (targets > median).any() else median])
    binned = np.digitize(targets, edges).astype(np.int64)
    binning = {"requested": target_bins, "num_bins": edges.size + 1, "edges": edges.tolist(),
               "rule": "training-split quantile bins; bin b holds edges[b-1] <= target < edges[b]"}
    return EstimatorInputs(modalities, binned, mask, binning, fingerprint)


def recorded_target_bins(path: str | os.PathLike | None) -> int | None:
    """The quantile-bin count a sidecar file's regression target was estimated on (None: no such file, or a
    classification sidecar)."""
    if path is None or not _resolve_file(path).exists():
        return None
    return (RusSidecar.load(path).metadata.get("target_bins") or {}).get("requested")


_ESTIMATE, _EXISTS, _FAILED = 1.0, 2.0, 3.0  # process 0's verdict, sent to the others


@contextmanager
def estimation_lock(path: Path, distributed: bool = False, device: str = "cpu") -> Iterator[bool]:
    """Hold ``<path>.lock`` while a sidecar is estimated into ``path``; yields whether ``path`` is absent (estimate).

    ``distributed``: process 0 alone takes the lock and looks at the file, and every process of the
    ``torch.distributed`` group follows its verdict (the others must not wait for its lock: they would never join
    the estimation's all-reduce); a lock held by another run is an error on every process."""
    from .batch import all_reduce_sum, process_group

    rank, world = process_group(device) if distributed else (0, 1)
    with ExitStack() as stack:
        verdict, failure = torch.zeros(1, dtype=torch.float64), None
        if rank == 0:
            try:
                stack.enter_context(exclusive_lock(path.with_name(path.name + ".lock"),
                                                   f"RUS sidecar {path} (being estimated)"))
                verdict[0] = _EXISTS if path.exists() else _ESTIMATE
            except RuntimeError as error:
                verdict[0], failure = _FAILED, error
        if world > 1:
            all_reduce_sum(verdict)  # only process 0 contributes
        if failure is not None:
            raise failure
        if verdict.item() == _FAILED:
            raise RuntimeError(f"RUS sidecar {path}: process 0 could not take its lock (see its error)")
        yield verdict.item() == _ESTIMATE


def _resolve_file(path_or_dir: str | os.PathLike) -> Path:
    path = Path(path_or_dir)
    return path / SIDECAR_FILENAME if path.is_dir() or not path.suffix else path


@dataclass
class RusSidecar:
    """Temporal RUS tensors [M, M, L] (float32, bits) and their metadata (see module docstring)."""

    redundancy: torch.Tensor
    uniqueness: torch.Tensor
    synergy: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        tensors = {}
        for name in _TENSOR_NAMES:
            tensor = torch.as_tensor(getattr(self, name), dtype=torch.float32)
            if tensor.dim() != 3 or tensor.shape[0] != tensor.shape[1]:
                raise ValueError(f"{name} must be [M, M, L], got {tuple(tensor.shape)}")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{name} holds NaN or inf values")
            if (tensor < 0).any():
                raise ValueError(f"{name} holds negative values (min {tensor.min().item():.3g} bits)")
            if tensor.diagonal(dim1=0, dim2=1).abs().max() > 0:
                raise ValueError(f"{name} must have a zero diagonal (a modality is not paired with itself)")
            tensors[name] = tensor.contiguous()
            setattr(self, name, tensors[name])
        shapes = {tuple(t.shape) for t in tensors.values()}
        if len(shapes) != 1:
            raise ValueError(f"redundancy, uniqueness and synergy shapes differ: {sorted(shapes)}")
        for name in ("redundancy", "synergy"):
            if not torch.allclose(tensors[name], tensors[name].transpose(0, 1), atol=1e-6):
                raise ValueError(f"{name} must be symmetric in its two modality axes")
        names = self.metadata.get("modality_names")
        if names is not None and len(names) != self.num_modalities:
            raise ValueError(f"metadata names {len(names)} modalities {names} but the tensors hold "
                             f"{self.num_modalities}")

    @property
    def num_modalities(self) -> int:
        return self.redundancy.shape[0]

    @property
    def num_lags(self) -> int:
        return self.redundancy.shape[2]

    @property
    def modality_names(self) -> list[str]:
        return list(self.metadata.get("modality_names") or [])

    def content_hash(self) -> str:
        """SHA-256 of the tensors and metadata → ``sha256:…``: tells two sidecars of the same data apart (the
        metadata's ``fingerprint`` names the data only)."""
        digest = hashlib.sha256(json.dumps(self.metadata, sort_keys=True).encode())
        for name in _TENSOR_NAMES:
            digest.update(getattr(self, name).numpy().tobytes())
        return f"sha256:{digest.hexdigest()}"

    def modality_uniqueness(self) -> torch.Tensor:
        """U_m(τ) [M, L]: per modality the max over the pairs containing it (reference rule)."""
        return self.uniqueness.max(dim=1).values

    def ablated(self, ablation: str, seed: int = 0) -> "RusSidecar":
        """This sidecar with its RUS replaced for an ablation (paper Fig. 14): ``zeros``; ``noise``, uniform on
        [0, 2·mean] per kind (mean over the off-diagonal entries, so the scale is kept); ``shuffled``, each kind's
        off-diagonal values permuted over pairs and lags. R and S stay symmetric, the diagonal zero; ``none``
        returns the sidecar itself. Seeded by ``seed``; the metadata records the ablation."""
        if ablation not in RUS_ABLATIONS:
            raise ValueError(f"rus_ablation got {ablation!r}; choose from {RUS_ABLATIONS}")
        if ablation == "none":
            return self
        generator = torch.Generator().manual_seed(seed)
        tables = {}
        for kind in _TENSOR_NAMES:
            symmetric = kind != "uniqueness"
            rows, cols = (torch.triu_indices(self.num_modalities, self.num_modalities, offset=1) if symmetric
                          else torch.nonzero(~torch.eye(self.num_modalities, dtype=torch.bool)).T)
            values = getattr(self, kind)[rows, cols]  # (pairs, L)
            if ablation == "zeros":
                values = torch.zeros_like(values)
            elif ablation == "noise":
                scale = float(values.mean()) if values.numel() and float(values.mean()) > 0 else 1.0
                values = 2 * scale * torch.rand(values.shape, generator=generator)
            else:
                values = values.reshape(-1)[torch.randperm(values.numel(), generator=generator)].reshape(values.shape)
            table = torch.zeros(self.num_modalities, self.num_modalities, self.num_lags)
            table[rows, cols] = values
            if symmetric:
                table[cols, rows] = values
            tables[kind] = table
        return RusSidecar(**tables, metadata={**self.metadata, "rus_ablation": ablation})

    # --------------------------------------------------------------------------------------------- files
    def save(self, path_or_dir: str | os.PathLike) -> Path:
        """Write ``rus.safetensors`` (or the given file name) atomically and durably (fsync); returns the path."""
        from safetensors.torch import save_file

        missing = [key for key in _REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ValueError(f"sidecar metadata lacks {missing}")
        tensors = {name: getattr(self, name) for name in _TENSOR_NAMES}
        header = {CARD_KEY: json.dumps(self.metadata, sort_keys=True)}
        return atomic_write(_resolve_file(path_or_dir),
                            lambda temporary: save_file(tensors, str(temporary), metadata=header))

    @classmethod
    def load(cls, path_or_dir: str | os.PathLike) -> "RusSidecar":
        """Read a sidecar file (or ``<dir>/rus.safetensors``), checking its format."""
        from safetensors import safe_open

        from safetensors import SafetensorError

        path = _resolve_file(path_or_dir)
        if not path.is_file():
            raise FileNotFoundError(f"no RUS sidecar at {path}")
        unreadable = f"{path} is not a readable RUS sidecar (delete it to re-estimate, or restore it)"
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                if CARD_KEY not in header:
                    raise ValueError(f"{path} is not a RUS sidecar (no {CARD_KEY!r} metadata in its header)")
                missing = [name for name in _TENSOR_NAMES if name not in handle.keys()]
                if missing:
                    raise ValueError(f"{path} lacks the tensors {missing}")
                tensors = {name: handle.get_tensor(name) for name in _TENSOR_NAMES}
        except SafetensorError as error:
            raise ValueError(f"{unreadable}: {error}") from error
        try:
            metadata = json.loads(header[CARD_KEY])
        except json.JSONDecodeError as error:
            raise ValueError(f"{unreadable}: its {CARD_KEY!r} metadata is not JSON ({error})") from error
        if not isinstance(metadata, dict):
            raise ValueError(f"{unreadable}: its {CARD_KEY!r} metadata is a {type(metadata).__name__}, not an object")
        version = metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has sidecar format version {version}; this library reads {FORMAT_VERSION}")
        return cls(**tensors, metadata=metadata)

    @classmethod
    def for_dataset(cls, splits, metadata, num_lags: int = 4, estimator: str = "multiscale_batch",
                    cache: str | os.PathLike | None = None, config=None, progress: bool = True,
                    target_bins: int | None = None, **estimator_options) -> "RusSidecar":
        """The temporal RUS of a dataset's training split (``splits["train"]``, modalities pooled onto the token
        grid of ``metadata``, a ``DatasetMetadata``), checked against that split.

        The labels are those of :func:`estimator_inputs`: class ids per window, or per step (-100 steps dropped,
        each lag pairs a step's inputs with the label ``lag`` steps later), or for a regression target the ids of
        ``target_bins`` quantile bins of the training split (the estimators need classes; the bins are recorded
        in the metadata under ``target_bins``; None: those of the cached sidecar, else
        :data:`REGRESSION_TARGET_BINS`). The metadata also records ``problem_type`` and ``label_granularity``.

        With ``cache`` (a file, or a folder → ``<folder>/rus.safetensors``): loaded from there when the file
        exists, otherwise estimated (class-balanced, resumable through ``<cache>.partial``) and written there
        atomically, by one process at a time (``<cache>.lock``; a second one is an error naming the first; the
        temporary files of a killed save of this file are removed first). A
        cached file of other modalities, lags, target bins or data is a :class:`RusSidecarMismatch` saying what
        differs. ``config``: a ``BatchConfig``; ``estimator_options`` go to ``estimate_temporal_rus``
        (``num_bins``, ``max_samples_per_lag``, ``distributed``: every process of the group calls this, process 0
        alone locks, saves and cleans up, see :func:`estimation_lock`)."""
        from .batch import process_group
        from .temporal import estimate_temporal_rus

        names = list(metadata.modality_names)
        path = None if cache is None else _resolve_file(cache)
        if target_bins is None:
            target_bins = recorded_target_bins(path) or REGRESSION_TARGET_BINS
        modalities, labels, mask, binning, fingerprint = estimator_inputs(splits["train"], metadata, target_bins)
        labelling = {"problem_type": metadata.problem_type, "label_granularity": metadata.label_granularity,
                     "fingerprint": fingerprint, **({"target_bins": binning} if binning else {})}

        def estimate(partial: Path | None) -> "RusSidecar":
            grid_hz = metadata.token_grid_hz
            estimated = estimate_temporal_rus(
                modalities, labels, num_lags=num_lags, estimator=estimator, config=config, modality_mask=mask,
                split="train", lags_seconds=[lag / grid_hz for lag in range(num_lags)] if grid_hz else None,
                partial_path=str(partial) if partial else None, progress=progress, **estimator_options)
            return cls(estimated.redundancy, estimated.uniqueness, estimated.synergy,
                       {**estimated.metadata, **labelling})

        if path is None:
            return estimate(None).validate(names, num_lags, fingerprint)
        distributed = estimator_options.get("distributed", False)
        if distributed or not path.exists():
            device = getattr(config, "device", "cpu")
            main = not distributed or process_group(device)[0] == 0
            with estimation_lock(path, distributed, device) as absent:  # checked again: another run may have written it
                if absent:
                    if main:
                        remove_leftovers(path.parent, path.name)  # of a save of this file that was killed
                    partial = path.with_name(path.name + ".partial")
                    estimated = estimate(partial)
                    if main:
                        estimated.save(path)
                    if distributed:
                        import torch.distributed as dist

                        dist.barrier()  # the sidecar is on disk before its partial results go and others load it
                    if main:
                        for finished in path.parent.glob(f"{partial.name}*"):  # the partial results (one per process)
                            finished.unlink()
        try:
            loaded = cls.load(path)
            recorded = recorded_target_bins(path)
            if binning and recorded != target_bins:  # named first: the binned labels' fingerprint differs too
                raise RusSidecarMismatch(f"RUS sidecar does not match: target bins differ: sidecar {recorded}, "
                                         f"expected {target_bins}")
            return loaded.validate(names, num_lags, fingerprint)
        except RusSidecarMismatch as error:
            raise RusSidecarMismatch(f"{path}: {error}. It was estimated for other data or settings: use the sidecar "
                                     "of this data, or delete the file to estimate it again.") from None

    # ---------------------------------------------------------------------------------------- validation
    def validate(self, modality_names: Sequence[str] | None = None, num_lags: int | None = None,
                 fingerprint: str | None = None) -> "RusSidecar":
        """Check the sidecar against a dataset or model; raise :class:`RusSidecarMismatch` naming every difference."""
        problems = []
        if modality_names is not None:
            problems += modality_differences(self.modality_names, list(modality_names), "the sidecar", "expected")
        if num_lags is not None and num_lags != self.num_lags:
            problems.append(f"lag count differs: sidecar has {self.num_lags}, expected {num_lags}")
        if fingerprint is not None and fingerprint != self.metadata.get("fingerprint"):
            problems.append(f"data fingerprint differs: sidecar {self.metadata.get('fingerprint')}, "
                            f"data {fingerprint} (was it computed on this training split?)")
        if problems:
            raise RusSidecarMismatch("RUS sidecar does not match: " + "; ".join(problems))
        return self

    def apply_to(self, model) -> None:
        """Check names (and lag count, where configured) against ``model.config`` and call ``model.set_rus``."""
        config = model.config
        self.validate(modality_names=list(config.modalities), num_lags=getattr(config, "num_rus_lags", None))
        model.set_rus(self.redundancy, self.uniqueness, self.synergy)

    # ----------------------------------------------------------------------------------------------- Hub
    def card_entry(self, filename: str = SIDECAR_FILENAME) -> dict:
        """The dataset-card YAML value under ``merge_rus`` that points to the sidecar."""
        return {"file": filename, "modalities": self.modality_names, "num_lags": self.num_lags,
                "split": self.metadata.get("split"), "fingerprint": self.metadata.get("fingerprint"),
                "format_version": FORMAT_VERSION}

    def push_to_hub(self, repo_id: str, filename: str = SIDECAR_FILENAME, revision: str | None = None,
                    token: str | None = None, endpoint: str | None = None, private: bool = False,
                    commit_message: str = "Add MERGE RUS sidecar") -> str:
        """Upload the sidecar into the dataset repo ``repo_id`` beside the data, in one commit with the dataset
        card whose YAML key ``merge_rus`` points to it (an existing card keeps everything else). A repo that does
        not exist yet is created (``private`` applies then). Returns the commit id."""
        from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi

        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        card = _existing_card(repo_id, revision, None, token, endpoint) or DatasetCard("---\n---\n")
        card.data[CARD_KEY] = self.card_entry(filename)
        with tempfile.TemporaryDirectory() as folder:
            local = self.save(Path(folder) / filename)
            operations = [CommitOperationAdd(path_in_repo=filename, path_or_fileobj=str(local)),
                          CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode())]
            info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type="dataset",
                                     revision=revision)
        return info.oid

    @classmethod
    def from_hub(cls, repo_id: str, filename: str | None = None, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None, token: str | None = None,
                 endpoint: str | None = None) -> "RusSidecar":
        """Download the sidecar of the dataset repo ``repo_id`` (``hf_hub_download``, repo_type dataset).

        Without ``filename`` the dataset card's ``merge_rus`` key names the file (default ``rus.safetensors``).
        """
        from huggingface_hub import hf_hub_download

        if filename is None:
            card = _existing_card(repo_id, revision, cache_dir, token, endpoint)
            entry = (card.data.to_dict().get(CARD_KEY) if card is not None else None) or {}
            filename = entry.get("file", SIDECAR_FILENAME)
        path = hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision, cache_dir=cache_dir,
                               token=token, endpoint=endpoint)
        return cls.load(path)


def _existing_card(repo_id: str, revision, cache_dir, token, endpoint):
    """The dataset card of ``repo_id`` or None when the repo has no README.md."""
    from huggingface_hub import DatasetCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    try:
        readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision,
                                 cache_dir=cache_dir, token=token, endpoint=endpoint)
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"there is no dataset repo {repo_id} (or no access to it) on "
                                f"{endpoint or 'the Hub'}: check the id and your token") from None
    except EntryNotFoundError:
        return None
    return DatasetCard.load(readme)
