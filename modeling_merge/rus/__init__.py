"""Temporal redundancy / uniqueness / synergy (RUS) estimation for MERGE (torch + numpy; never imports the model).

Submodules: ``synthetic`` (known-answer generators, numpy only), ``pid`` (exact discrete PID), ``sinkhorn``,
``batch`` (BATCH, multi-scale and step-wise), ``temporal`` (lagged samples and ``estimate_temporal_rus``),
``sidecar`` (``rus.safetensors``), ``progress`` (resumable partial results), ``plotting``, ``cli``.
Names are imported lazily, so importing this package loads no submodule until one is used.
"""

from importlib import import_module

_EXPORTS = {
    "TemporalRusBenchmark": "synthetic",
    "make_temporal_rus_benchmark": "synthetic",
    "discrete_pid_cases": "synthetic",
    "exact_pid": "pid",
    "quantized_pid": "pid",
    "PairwiseRus": "pid",
    "BatchConfig": "batch",
    "multiscale_batch": "batch",
    "stepwise_batch": "batch",
    "ESTIMATORS": "temporal",
    "estimate_temporal_rus": "temporal",
    "lagged_samples": "temporal",
    "pool_to_grid": "temporal",
    "arrays_from_dataset": "temporal",
    "RusSidecar": "sidecar",
    "RusSidecarMismatch": "sidecar",
    "fingerprint_arrays": "sidecar",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
