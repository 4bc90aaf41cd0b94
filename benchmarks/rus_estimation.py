"""Measured claims of the RUS estimators (prints figures; not a test).

1. Multi-scale vs step-wise BATCH on the same data (the known-RUS synthetic benchmark): wall-time ratio
   (the paper claims about L-fold for L lags) and the relative R / U / S difference
   Σ|multi-scale − step-wise| / Σ|step-wise| per term (target ≤ 10 %), plus planted-structure recovery.
2. Sinkhorn iterations to a 1e-6 marginal error, with and without the class-mass rescaling.
3. Time to estimate all M(M−1)/2 pairs for M = 4, 16, 64 modalities: seconds per discriminator step,
   per alignment step and per read-out batch, and the projected time of a default run.

    python benchmarks/rus_estimation.py            # full figures (~10 min on 2 CPU cores)
    python benchmarks/rus_estimation.py --quick    # smaller budget (~2 min)
    python benchmarks/rus_estimation.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from modeling_merge.rus.batch import BatchConfig, _PairBatchEstimator, multiscale_batch, stepwise_batch
from modeling_merge.rus.sinkhorn import sinkhorn_couplings
from modeling_merge.rus.synthetic import make_temporal_rus_benchmark
from modeling_merge.rus.temporal import lagged_samples


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).sum() / max(np.abs(b).sum(), 1e-12))


def _planted_recovered(pairwise, bench) -> bool:
    """Planted redundancy / synergy are the largest of their kind; unique modalities peak at their lag."""
    names = list(bench.modalities)
    redundancy, uniqueness, synergy = pairwise.to_matrices(len(names))
    checks = []
    for kind, tensor in (("redundant", redundancy), ("synergistic", synergy)):
        a, b = (names.index(n) for n in bench.planted[kind]["pair"])
        checks.append(np.unravel_index(tensor.argmax(), tensor.shape) in
                      {(a, b, bench.planted[kind]["lag"]), (b, a, bench.planted[kind]["lag"])})
    per_modality = uniqueness.max(axis=1)
    checks += [per_modality[names.index(n)].argmax() == lag for n, lag in bench.planted["unique"].items()]
    return all(checks)


def multiscale_vs_stepwise(config: BatchConfig, num_sequences: int, num_lags: int) -> None:
    bench = make_temporal_rus_benchmark(num_sequences=num_sequences, seq_len=max(8, num_lags), num_lags=num_lags)
    samples = lagged_samples(bench.modalities, bench.labels, num_lags)
    args = (samples.features, samples.labels, samples.num_classes, config)
    start = time.perf_counter()
    multi = multiscale_batch(*args, progress=False)
    multi_s = time.perf_counter() - start
    start = time.perf_counter()
    step = stepwise_batch(*args, progress=False)
    step_s = time.perf_counter() - start
    print(f"\n[1] multi-scale vs step-wise BATCH: M={len(samples.modality_names)}, L={num_lags}, "
          f"N={num_sequences}, {config.discriminator_steps}+{config.alignment_steps} steps per network set, "
          f"batch {config.batch_size}")
    print(f"    wall time: multi-scale {multi_s:.1f} s, step-wise {step_s:.1f} s, ratio {step_s / multi_s:.2f}x "
          f"(paper: ~L = {num_lags}x)")
    for term in ("redundancy", "unique_i", "unique_j", "synergy"):
        print(f"    relative difference {term:<10}: "
              f"{100 * _relative_difference(getattr(multi, term), getattr(step, term)):.1f} %")
    both_u = (np.concatenate([multi.unique_i, multi.unique_j]), np.concatenate([step.unique_i, step.unique_j]))
    total = _relative_difference(np.concatenate([multi.redundancy, *both_u[:1], multi.synergy]),
                                 np.concatenate([step.redundancy, *both_u[1:], step.synergy]))
    print(f"    relative difference all R/U/S : {100 * total:.1f} % (target <= 10 %)")
    print(f"    planted structure recovered: multi-scale {_planted_recovered(multi, bench)}, "
          f"step-wise {_planted_recovered(step, bench)}")
    print(f"    clipped negative mass (bits): multi-scale {multi.clipped:.3f}, step-wise {step.clipped:.3f}")


def sinkhorn_iterations(device: str) -> None:
    print("\n[2] Sinkhorn iterations to 1e-6 marginal error (P=21 pairs, K=2 classes, B=256, standardised d_e=10 "
          "embeddings)")
    generator = torch.Generator().manual_seed(0)
    pairs, classes, batch, dim = 21, 2, 256, 10
    for label, scale in (("random embeddings", 1.0), ("sharper kernel (x3)", 3.0)):
        embeddings = torch.randn(2, pairs, classes, batch, dim, generator=generator)
        embeddings = (embeddings - embeddings.mean(-1, keepdim=True)) / embeddings.std(-1, keepdim=True)
        log_kernel = scale * torch.einsum("pkad,pkbd->pkab", embeddings[0], embeddings[1]) / dim ** 0.5
        logits = 2.0 * torch.randn(2, pairs, batch, classes, generator=generator)
        rows, cols = (p.softmax(-1).permute(0, 2, 1).contiguous() / batch for p in logits)
        for rescale in (True, False):
            start = time.perf_counter()
            result = sinkhorn_couplings(log_kernel.to(device), rows.to(device), cols.to(device), tol=1e-6,
                                        max_iter=500, rescale_columns=rescale)
            elapsed = time.perf_counter() - start
            print(f"    {label:<22} rescaled={str(rescale):<5}: {result.iterations:>3} iterations, "
                  f"error {result.marginal_error:.1e}, {1000 * elapsed:.0f} ms")


def pair_scaling(config: BatchConfig, sizes: list[int], repeats: int) -> None:
    print(f"\n[3] all-pairs cost vs number of modalities (batch {config.batch_size}, 3 channels, device "
          f"{config.device})")
    print(f"    {'M':>3} {'pairs':>6} {'disc s/step':>12} {'align s/step':>13} {'readout s/lag':>14} "
          f"{'projected run (L=4)':>20}")
    for num_modalities in sizes:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 2000)
        features = (rng.standard_normal((2000, num_modalities, 3)) + labels[:, None, None]).astype(np.float32)
        estimator = _PairBatchEstimator([features] * 4, [labels] * 4, 2, config, range(4))
        timings = []
        for phase, steps_field in ((estimator.train_discriminators, "discriminator_steps"),
                                   (estimator.train_alignment, "alignment_steps")):
            setattr(estimator.config, steps_field, repeats)
            start = time.perf_counter()
            phase()
            timings.append((time.perf_counter() - start) / repeats)
        start = time.perf_counter()
        estimator.config.readout_batches = 1
        estimator.read_out(0)
        readout = (time.perf_counter() - start) * 4
        projected = timings[0] * 600 + timings[1] * 100 + readout * 4
        print(f"    {num_modalities:>3} {num_modalities * (num_modalities - 1) // 2:>6} {timings[0]:>12.3f} "
              f"{timings[1]:>13.3f} {readout / 4:>14.3f} {projected:>18.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    config = BatchConfig(batch_size=128 if quick else 256, discriminator_steps=300 if quick else 600,
                         alignment_steps=30 if quick else 100, device=args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    multiscale_vs_stepwise(config, num_sequences=1000 if quick else 2000, num_lags=4)
    sinkhorn_iterations(args.device)
    scaling = BatchConfig(batch_size=128, device=args.device)
    pair_scaling(scaling, [4, 16] if quick else [4, 16, 64], repeats=2 if quick else 3)


if __name__ == "__main__":
    main()
