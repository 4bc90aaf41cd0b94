"""Shared machinery of the benchmark scripts: environment record, interleaved timing, peak tensor memory, log-log growth fits, plain-text tables and atomic JSON output.

Timing rule: variants that are compared are timed side by side in one process, one call of each per round
and the order rotated every round, so that load from other processes on a shared machine hits all of them
alike; the figure reported is the median over rounds (with the min and the process-CPU median beside it).
Peak memory is measured separately (tracking slows a call down), on an already warmed-up call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_common_arguments(parser: argparse.ArgumentParser, default_output: str) -> None:
    """--device, --dtype, --threads, --rounds, --quick and --output (default `results/<default_output>`)."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (cuda implies --dtype bf16 unless given)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (a rough figure)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / default_output,
                        help="JSON results file ('-' = do not write)")


def resolve_dtype(args: argparse.Namespace):
    """The torch dtype asked for: `--dtype`, else bf16 on CUDA and fp32 elsewhere."""
    import torch

    name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.dtype = name
    return torch.bfloat16 if name == "bf16" else torch.float32


def environment(device: str, dtype: str | None = None) -> dict:
    """What the figures were measured on: date, versions, threads, cores, device (name), load average."""
    import torch

    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "os_cpu_count": os.cpu_count(),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "load_average_1_5_15": list(os.getloadavg()),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    if dtype is not None:
        record["dtype"] = dtype
    return record


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_timings(functions: dict[str, Callable[[], object]], rounds: int, device: str = "cpu",
                        warmup: int = 1, log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Time every function `rounds` times, one call of each per round, rotating the order every round.

    Returns name → {"median_s", "min_s", "cpu_median_s", "rounds"}; `cpu_median_s` is process CPU time per
    call (all threads), less sensitive than wall time to other processes but inflated by spin-waiting.
    """
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    synchronize(device)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            functions[name]()
            synchronize(device)
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
        if log is not None:
            log(f"  round {round_index + 1}/{rounds}: "
                + ", ".join(f"{name} {wall[name][-1]:.3f}s" for name in names))
    return {name: {"median_s": statistics.median(wall[name]), "min_s": min(wall[name]),
                   "cpu_median_s": statistics.median(cpu[name]), "rounds": rounds} for name in names}


class _LiveTensorMemory:
    """Counts the bytes of every distinct tensor storage alive, as a dispatch mode: each op's outputs are added
    when first seen and subtracted when their storage is freed (weakref callback); the peak is kept."""

    def __init__(self, tensors):
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        for tensor in tensors:
            self.add(tensor)

    def add(self, tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live or storage.device.type == "meta":
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def mode(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                output = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(output):
                    if isinstance(leaf, torch.Tensor):
                        tracker.add(leaf)
                return output

        return Mode()


def peak_memory_mib(function: Callable[[], object], device: str, *tracked) -> float:
    """Peak MiB of the live tensors while `function()` runs: those it creates (activations, temporaries,
    gradients) plus, already counted at the start, the parameters, gradients and optimizer state of the
    `tracked` modules / optimizers. CUDA: `torch.cuda.max_memory_allocated` (every tensor on the device)."""
    import torch

    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        function()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    existing = []
    for owner in tracked:
        if isinstance(owner, torch.nn.Module):
            existing += [tensor for tensor in owner.state_dict(keep_vars=True).values()]
            existing += [parameter.grad for parameter in owner.parameters() if parameter.grad is not None]
        else:
            existing += [value for state in owner.state.values() for value in state.values()
                         if isinstance(value, torch.Tensor)]
    tracker = _LiveTensorMemory(existing)
    with tracker.mode():
        function()
    return tracker.peak / 2**20


def loglog_slope(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(size): the growth exponent (cost ∝ size^slope)."""
    import numpy as np

    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; `columns` = (key, header, format spec); a missing value prints as '-'."""
    header = [title for _, title, _ in columns]
    body = [[("-" if row.get(key) is None else format(row[key], spec)) for key, _, spec in columns] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_json(path: Path | str, payload: dict) -> None:
    """Atomic write (temp file in the same folder, then os.replace); '-' writes nothing."""
    if str(path) == "-":
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)
    print(f"wrote {path}")
