"""Resumable estimation: a partial-results file written atomically after every finished unit of work."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["PartialResults", "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())  # on disk before it replaces the old file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class PartialResults:
    """Finished units (key → tensors / numbers / strings) of one estimation run, persisted at ``path``.

    ``signature`` identifies the run (data fingerprint, estimator and settings); a file written for a
    different signature is ignored with a warning and replaced. ``path=None`` keeps results in memory only.
    """

    def __init__(self, path: str | os.PathLike | None, signature: str):
        self.path = Path(path) if path is not None else None
        self.signature = signature
        self.units: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            stored = torch.load(self.path, weights_only=True)
            if stored.get("signature") == signature:
                self.units = stored["units"]
            else:
                warnings.warn(f"ignoring partial results in {self.path}: they belong to a different run "
                              "(data, estimator or settings changed)", stacklevel=2)

    def __contains__(self, key: str) -> bool:
        return key in self.units

    def __getitem__(self, key: str) -> Any:
        return self.units[key]

    def put(self, key: str, value: Any) -> None:
        """Record a finished unit and persist the file."""
        self.units[key] = value
        if self.path is not None:
            atomic_torch_save({"signature": self.signature, "units": self.units}, self.path)

    def remove_file(self) -> None:
        """Delete the file once the final output is written."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
