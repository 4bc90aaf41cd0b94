"""``merge-rus``: estimate temporal RUS into a sidecar, draw it, push it next to a dataset on the Hub.

    merge-rus estimate --arrays train.npz --num_lags 4 --output out/            # arrays in, rus.safetensors out
    merge-rus estimate --dataset synthetic --dataset_options '{"num_sequences": 500}' --output out/
    accelerate launch --num_processes 2 -m modeling_merge.rus.cli estimate --arrays train.npz --pair_block_size 64 \
        --output out/                                                             # pair blocks shared by 2 processes
    merge-rus plot out/rus.safetensors --output_dir figures/
    merge-rus push out/rus.safetensors lab/my-dataset                             # creates the dataset repo if needed

``--arrays``: an ``.npz`` with one (N, T, C) array per modality (on one token grid), ``label`` ((N,) or (N, T))
and optionally ``modality_mask`` (N, M). ``--dataset``: a ``dataset_builders`` name; its training split is
used, modalities pooled to the token grid by the builder's patch sizes (``RusSidecar.for_dataset``, as
``examples/train.py`` does, so the sidecar is accepted there with the same ``--dataset_options``; per-step labels
are used step by step, a regression target is binned into ``--target_bins`` training-split quantile bins, recorded
in the sidecar). ``--arrays`` labels must be class ids (bin a regression target first). Estimation is
resumable: an interrupted run leaves ``<output>.partial`` beside the output and the next identical run continues;
one process at a time estimates into an output (``<output>.lock``). Options are snake_case, as in every script
of this project (the kebab-case spellings are accepted too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .batch import BatchConfig

__all__ = ["main", "build_parser", "batch_config", "INFORMATION_READOUTS"]

INFORMATION_READOUTS = ("plugin", "cross_entropy")  # BatchConfig.information_readout

_RESERVED = ("label", "modality_mask")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring kept as written, and every option's default shown."""


def _option(group, name: str, **kwargs) -> None:
    """``--snake_case`` with its ``--kebab-case`` spelling as an alias (as ``HfArgumentParser`` does)."""
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    group.add_argument(*spellings, **kwargs)


def _dataset_options(text: str) -> dict:
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"--dataset_options is not JSON ({error}): pass an object such as '{{\"window\": 50}}'") from None
    if not isinstance(options, dict):
        raise SystemExit(f"--dataset_options must be a JSON object of builder field: value pairs, got {text!r}")
    return options


def _load_arrays(path: Path, modality_names: list[str] | None):
    if not path.is_file():
        raise SystemExit(f"--arrays: no file {path}")
    with np.load(path) as archive:
        if "label" not in archive.files:
            raise SystemExit(f"--arrays: {path} has no 'label' array (it has {archive.files})")
        names = modality_names or [key for key in archive.files if key not in _RESERVED]
        missing = [name for name in names if name not in archive.files]
        if missing:
            raise SystemExit(f"--arrays: {path} lacks the modalities {missing} (it has {archive.files})")
        modalities = {name: archive[name] for name in names}
        mask = archive["modality_mask"] if "modality_mask" in archive.files else None
        labels = archive["label"]
        if labels.dtype.kind not in "biu" and not np.array_equal(labels, np.round(labels)):
            raise SystemExit(f"--arrays: {path}'s 'label' holds non-integer values ({labels.dtype}): the estimators "
                             "need class ids (-100 = unlabelled step); bin a regression target into classes first, "
                             "or estimate from --dataset, which bins it into --target_bins quantile bins")
        return modalities, labels, mask


def batch_config(args) -> "BatchConfig":
    """The ``BatchConfig`` of ``merge-rus estimate``'s options."""
    from .batch import BatchConfig

    return BatchConfig(batch_size=args.batch_size, discriminator_steps=args.discriminator_steps,
                       alignment_steps=args.alignment_steps, pair_block_size=args.pair_block_size,
                       information_readout=args.information_readout, pin_tolerance_bits=args.pin_tolerance_bits,
                       seed=args.seed, device=args.device)


def _switch(text: str) -> bool:
    """``true`` / ``false`` (also 1 / 0, yes / no, on / off)."""
    value = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value[text.lower()]


def _launched_distributed() -> bool:
    """Whether a launcher (``accelerate launch``, ``torchrun``) started several processes (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _estimate(args) -> Path:
    from .batch import process_group
    from .sidecar import SIDECAR_FILENAME, RusSidecar, estimation_lock
    from .temporal import estimate_temporal_rus

    if (args.arrays is None) == (args.dataset is None):
        raise SystemExit("give exactly one of --arrays FILE.npz or --dataset NAME")
    output = Path(args.output)
    if output.is_dir() or not output.suffix:
        output = output / SIDECAR_FILENAME
    config = batch_config(args)
    main_process = not args.distributed or process_group(config.device)[0] == 0
    options = dict(num_lags=args.num_lags, estimator=args.estimator, config=config, num_bins=args.num_bins,
                   max_samples_per_lag=args.max_samples_per_lag, progress=not args.no_progress and main_process,
                   distributed=args.distributed)
    existed = output.exists()
    if args.dataset is not None:
        from dataset_builders import build, metadata_of

        dataset_options = _dataset_options(args.dataset_options)
        splits = build(args.dataset, data_dir=args.data_dir, cache_dir=args.dataset_cache_dir, **dataset_options)
        sidecar = RusSidecar.for_dataset(splits, metadata_of(splits), cache=output, target_bins=args.target_bins,
                                         **options)
    else:
        names = args.modalities.split(",") if args.modalities else None
        modalities, labels, mask = _load_arrays(Path(args.arrays), names)
        with estimation_lock(output, args.distributed, config.device) as absent:
            if not absent:
                raise SystemExit(f"{output} exists; delete it to estimate again, or choose another --output")
            sidecar = estimate_temporal_rus(modalities, labels, modality_mask=mask, split="train",
                                            partial_path=str(output.with_name(output.name + ".partial")),
                                            output=output, **options)
    if not main_process:
        return output
    action = "kept the existing" if existed else "wrote"
    print(f"{action} {output} ({sidecar.num_modalities} modalities, {sidecar.num_lags} lags, "
          f"{sidecar.metadata['estimator']}; clipped {sidecar.metadata['clipped_negative_mass_bits']:.4f} bits)"
          + ("; it matches the data (delete it to estimate again)" if existed else ""))
    return output


def _plot(args) -> list[Path]:
    from .plotting import plot_rus_curves, plot_rus_heatmap
    from .sidecar import RusSidecar

    sidecar = RusSidecar.load(args.sidecar)
    folder = Path(args.output_dir)
    paths = [plot_rus_curves(sidecar, folder / "temporal_rus.png", top_pairs=args.top_pairs),
             plot_rus_heatmap(sidecar, folder / "rus_heatmap.png")]
    for path in paths:
        print(f"wrote {path}")
    return paths


def _push(args) -> str:
    from .sidecar import RusSidecar

    commit = RusSidecar.load(args.sidecar).push_to_hub(args.repo_id, filename=args.filename, revision=args.revision,
                                                         endpoint=args.endpoint, private=args.private)
    print(f"pushed {args.sidecar} to datasets/{args.repo_id} ({args.filename}) in commit {commit}")
    return commit


def build_parser() -> argparse.ArgumentParser:
    from dataset_builders import BUILDER_ALIASES, BUILDERS

    from .batch import BatchConfig
    from .sidecar import REGRESSION_TARGET_BINS
    from .temporal import ESTIMATORS

    defaults = BatchConfig()
    parser = argparse.ArgumentParser(prog="merge-rus", description=__doc__, formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    estimate = commands.add_parser("estimate", help="estimate temporal RUS on a training split → rus.safetensors",
                                   formatter_class=_HelpFormatter)
    source = estimate.add_argument_group("input (one of)")
    _option(source, "arrays", help=".npz with one (N, T, C) array per modality, 'label', optional 'modality_mask'")
    _option(source, "dataset", choices=sorted({*BUILDERS, *BUILDER_ALIASES}),
            help="a dataset_builders name (its train split is used)")
    _option(estimate, "data_dir", help="raw files of the dataset (builders that read files)")
    _option(estimate, "dataset_cache_dir", help="datasets cache folder (None: the datasets library's)")
    _option(estimate, "dataset_options", default="{}", help="JSON object of builder config fields, as in train.py")
    _option(estimate, "modalities", help="--arrays: comma-separated modality names and order (None: all, file order)")
    _option(estimate, "output", required=True, help="sidecar file or folder (→ folder/rus.safetensors)")
    _option(estimate, "num_lags", type=int, default=4, help="L, lags of the temporal RUS (token-grid steps 0..L-1)")
    _option(estimate, "estimator", choices=ESTIMATORS, default="multiscale_batch", help="RUS estimator")
    _option(estimate, "batch_size", type=int, default=defaults.batch_size, help="BATCH: samples per training batch")
    _option(estimate, "discriminator_steps", type=int, default=defaults.discriminator_steps, help="BATCH: discriminator training steps")
    _option(estimate, "alignment_steps", type=int, default=defaults.alignment_steps, help="BATCH: Sinkhorn alignment training steps")
    _option(estimate, "pair_block_size", type=int, default=defaults.pair_block_size,
            help="BATCH: pairs per independent block (the units processes share; None: one block)")
    _option(estimate, "information_readout", choices=INFORMATION_READOUTS, default=defaults.information_readout,
            help="BATCH: plugin (the paper's) or cross_entropy (H(Y) - held-out cross-entropy, not inflated by "
                 "overfitting)")
    _option(estimate, "pin_tolerance_bits", type=float, default=defaults.pin_tolerance_bits,
            help="BATCH: a pair whose bounds pin I_q* within this many bits at every lag is not aligned")
    _option(estimate, "distributed", type=_switch, nargs="?", const=True, default=_launched_distributed(),
            help="share the work among the torch.distributed processes (on by default under accelerate launch / "
                 "torchrun, WORLD_SIZE > 1; '--distributed false' estimates in every process alone); process 0 "
                 "writes the sidecar and prints")
    _option(estimate, "num_bins", type=int, default=4, help="quantized_exact: symbols per modality")
    _option(estimate, "target_bins", type=int, default=REGRESSION_TARGET_BINS,
            help="--dataset with a regression target: training-split quantile bins it is estimated on")
    _option(estimate, "max_samples_per_lag", type=int, default=20000, help="class-balanced subsample per lag")
    _option(estimate, "seed", type=int, default=0, help="seed of the subsampling and the estimator")
    _option(estimate, "device", default="cpu", help="torch device of the BATCH networks")
    _option(estimate, "no_progress", action="store_true", help="no progress bar")
    estimate.set_defaults(handler=_estimate)

    plot = commands.add_parser("plot", help="temporal R/U/S curves and a pair × lag heat map (PNG)",
                               formatter_class=_HelpFormatter)
    plot.add_argument("sidecar", help="rus.safetensors or its folder")
    _option(plot, "output_dir", default=".", help="folder for temporal_rus.png and rus_heatmap.png")
    _option(plot, "top_pairs", type=int, default=6, help="pairs drawn in temporal_rus.png (the strongest)")
    plot.set_defaults(handler=_plot)

    push = commands.add_parser("push", help="upload a sidecar next to a dataset on the Hub (repo_type dataset)",
                               formatter_class=_HelpFormatter)
    push.add_argument("sidecar", help="rus.safetensors or its folder")
    push.add_argument("repo_id", help="dataset repo, e.g. org/wesad-e4 (created if it does not exist)")
    _option(push, "filename", default="rus.safetensors", help="path of the sidecar in the repo")
    _option(push, "revision", help="branch to commit to (None: main)")
    _option(push, "endpoint", help="Hub endpoint (None: HF_ENDPOINT or huggingface.co)")
    _option(push, "private", action="store_true", help="create the repo private (when it does not exist yet)")
    push.set_defaults(handler=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
