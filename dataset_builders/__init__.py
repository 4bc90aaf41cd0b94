"""Hugging Face `datasets` builders for the MERGE benchmarks, with one uniform output.

`build(name, data_dir=..., cache_dir=..., **config_fields)` gives a `DatasetDict` (train / validation / test)
with one `Array2D` column per modality, `label`, `subject` and, where modalities can be missing,
`modality_mask`; `metadata_of(dataset)` gives the `DatasetMetadata` a `MergeConfig` is built from. `label` is
one class id per window by default; `label_granularity="step"` (PAMAP2, WESAD, Opportunity) gives one class id
per token-grid step (-100 where unlabelled) and MOSI's `task="regression"` a float score (see
`DatasetMetadata.features`).
"""

from __future__ import annotations

import datasets

from ._common import (
    BuildPlan,
    DatasetMetadata,
    Example,
    MergeBuilderConfig,
    MergeTimeSeriesBuilder,
    metadata_of,
)

from .generic import GenericBuilder
from .opportunity import OpportunityBuilder
from .pamap2 import Pamap2Builder
from .wesad import WesadBuilder
from .physionet2012 import PhysioNet2012Builder
from .synthetic import SyntheticRusBuilder
from .mosi import MosiBuilder
from .mimic_iv import MimicIVBuilder

# The registry: one line per builder (name → builder class).
BUILDERS: dict[str, type[datasets.GeneratorBasedBuilder]] = {
    "pamap2": Pamap2Builder,
    "opportunity": OpportunityBuilder,
    "generic": GenericBuilder,
    "wesad": WesadBuilder,
    "physionet2012": PhysioNet2012Builder,
    "synthetic": SyntheticRusBuilder,
    "mosi": MosiBuilder,
    "mimic_iv": MimicIVBuilder,
}
# Names for a builder with some config fields fixed (alias → builder name, fields).
BUILDER_ALIASES: dict[str, tuple[str, dict]] = {"wesad_e4": ("wesad", {"source": "e4"})}


def build(
    name: str,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    download_mode: str | None = None,
    **config_fields,
) -> datasets.DatasetDict:
    """Prepare the builder `name` (see `BUILDERS`, or an alias of `BUILDER_ALIASES` such as `wesad_e4`) on
    `data_dir` and return its train / validation / test splits.

    `config_fields` are fields of that builder's config (window, stride, *_subjects, ...). A build is cached
    under `cache_dir` by builder, config and data_dir path (not file contents): after changing the files,
    pass `download_mode="force_redownload"` to rebuild.
    """
    name, fixed_fields = BUILDER_ALIASES.get(name, (name, {}))
    if name not in BUILDERS:
        raise KeyError(f"unknown dataset builder {name!r}; known builders: {sorted(BUILDERS)}, "
                       f"aliases: {sorted(BUILDER_ALIASES)}")
    builder = BUILDERS[name](data_dir=data_dir, cache_dir=cache_dir, **{**fixed_fields, **config_fields})
    builder.download_and_prepare(download_mode=download_mode)
    return builder.as_dataset()


__all__ = [
    "BUILDERS",
    "BUILDER_ALIASES",
    "BuildPlan",
    "DatasetMetadata",
    "Example",
    "MergeBuilderConfig",
    "MergeTimeSeriesBuilder",
    "build",
    "metadata_of",
]
