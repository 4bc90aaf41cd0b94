"""``merge-rus``: estimate temporal RUS into a sidecar, draw it, push it next to a dataset on the Hub.

    merge-rus estimate --arrays train.npz --num-lags 4 --output out/            # arrays in, rus.safetensors out
    merge-rus estimate --dataset synthetic --dataset-config num_sequences=500 --output out/
    merge-rus plot out/rus.safetensors --output-dir figures/
    merge-rus push out/rus.safetensors lab/my-dataset

``--arrays``: an ``.npz`` with one (N, T, C) array per modality (on one token grid), ``label`` ((N,) or (N, T))
and optionally ``modality_mask`` (N, M). ``--dataset``: a ``dataset_builders`` name; its training split is
used, modalities are pooled to the token grid by the builder's patch sizes. Estimation is resumable: an
interrupted run leaves ``<output>.partial.pt`` beside the output and the next identical run continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]

_RESERVED = ("label", "modality_mask")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str]) -> dict:
    config = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"--dataset-config expects key=value, got {pair!r}")
        config[key] = _parse_value(value)
    return config


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
        return modalities, archive["label"], mask, None


def _load_dataset(name: str, args):
    from dataset_builders import build, metadata_of

    from .temporal import arrays_from_dataset

    splits = build(name, data_dir=args.data_dir, cache_dir=args.cache_dir, **_key_values(args.dataset_config))
    metadata = metadata_of(splits)
    modalities, labels, mask = arrays_from_dataset(splits["train"], list(metadata.modalities), metadata.patch_sizes)
    lags_seconds = [lag / metadata.token_grid_hz for lag in range(args.num_lags)] if metadata.token_grid_hz else None
    return modalities, labels, mask, lags_seconds


def _estimate(args) -> Path:
    from .batch import BatchConfig
    from .sidecar import SIDECAR_FILENAME
    from .temporal import estimate_temporal_rus

    if (args.arrays is None) == (args.dataset is None):
        raise SystemExit("give exactly one of --arrays FILE.npz or --dataset NAME")
    names = args.modalities.split(",") if args.modalities else None
    if args.arrays is not None:
        modalities, labels, mask, lags_seconds = _load_arrays(Path(args.arrays), names)
    else:
        modalities, labels, mask, lags_seconds = _load_dataset(args.dataset, args)
    output = Path(args.output)
    if output.is_dir() or not output.suffix:
        output = output / SIDECAR_FILENAME
    config = BatchConfig(batch_size=args.batch_size, discriminator_steps=args.discriminator_steps,
                         alignment_steps=args.alignment_steps, seed=args.seed, device=args.device)
    sidecar = estimate_temporal_rus(
        modalities, labels, num_lags=args.num_lags, estimator=args.estimator, config=config, modality_mask=mask,
        split="train", lags_seconds=lags_seconds, num_bins=args.num_bins,
        max_samples_per_lag=args.max_samples_per_lag,
        partial_path=str(output.with_name(output.name + ".partial.pt")), output=output, progress=not args.no_progress)
    print(f"wrote {output} ({sidecar.num_modalities} modalities, {sidecar.num_lags} lags, "
          f"{sidecar.metadata['estimator']}; clipped {sidecar.metadata['clipped_negative_mass_bits']:.4f} bits)")
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
                                                         endpoint=args.endpoint)
    print(f"pushed {args.sidecar} to datasets/{args.repo_id} ({args.filename}) in commit {commit}")
    return commit


def build_parser() -> argparse.ArgumentParser:
    from .temporal import ESTIMATORS

    parser = argparse.ArgumentParser(prog="merge-rus", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    estimate = commands.add_parser("estimate", help="estimate temporal RUS on a training split → rus.safetensors")
    source = estimate.add_argument_group("input (one of)")
    source.add_argument("--arrays", help=".npz with one (N, T, C) array per modality, 'label', optional 'modality_mask'")
    source.add_argument("--dataset", help="a dataset_builders name (its train split is used)")
    estimate.add_argument("--data-dir", help="raw files of the dataset (builders that read files)")
    estimate.add_argument("--cache-dir", help="datasets cache folder")
    estimate.add_argument("--dataset-config", nargs="*", default=[], metavar="KEY=VALUE",
                          help="builder config fields (values parsed as JSON where possible)")
    estimate.add_argument("--modalities", help="comma-separated modality names and order (default: all, file order)")
    estimate.add_argument("--output", required=True, help="sidecar file or folder (→ folder/rus.safetensors)")
    estimate.add_argument("--num-lags", type=int, default=4)
    estimate.add_argument("--estimator", choices=ESTIMATORS, default="multiscale_batch")
    estimate.add_argument("--batch-size", type=int, default=256)
    estimate.add_argument("--discriminator-steps", type=int, default=600)
    estimate.add_argument("--alignment-steps", type=int, default=100)
    estimate.add_argument("--num-bins", type=int, default=4, help="quantized_exact: symbols per modality")
    estimate.add_argument("--max-samples-per-lag", type=int, default=20000)
    estimate.add_argument("--seed", type=int, default=0)
    estimate.add_argument("--device", default="cpu")
    estimate.add_argument("--no-progress", action="store_true")
    estimate.set_defaults(handler=_estimate)

    plot = commands.add_parser("plot", help="temporal R/U/S curves and a pair × lag heat map (PNG)")
    plot.add_argument("sidecar", help="rus.safetensors or its folder")
    plot.add_argument("--output-dir", default=".")
    plot.add_argument("--top-pairs", type=int, default=6)
    plot.set_defaults(handler=_plot)

    push = commands.add_parser("push", help="upload a sidecar next to a dataset on the Hub (repo_type dataset)")
    push.add_argument("sidecar")
    push.add_argument("repo_id")
    push.add_argument("--filename", default="rus.safetensors")
    push.add_argument("--revision")
    push.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    push.set_defaults(handler=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
