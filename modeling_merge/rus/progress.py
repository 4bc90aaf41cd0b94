"""Resumable estimation: a partial-results file written atomically after every finished unit of work."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write

__all__ = ["PartialResults"]


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
            try:
                stored = torch.load(self.path, weights_only=True)
            except Exception as error:  # truncated, random bytes, or not a partial-results file at all
                raise ValueError(f"{self.path} is not a readable partial-results file ({type(error).__name__}: "
                                 f"{str(error)[:200]}); delete it to start this estimation over") from None
            if not isinstance(stored, dict) or not isinstance(stored.get("units"), dict):
                raise ValueError(f"{self.path} is not a partial-results file of merge RUS estimation (no 'units'); "
                                 "delete it to start this estimation over")
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
        """Record a finished unit and persist the file (atomically, fsync'ed)."""
        self.units[key] = value
        if self.path is not None:
            record = {"signature": self.signature, "units": self.units}
            atomic_write(self.path, lambda temporary: torch.save(record, temporary))

    def remove_file(self) -> None:
        """Delete the file once the final output is written."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
