"""Installable package for MERGE: RUS-guided mixture-of-experts for massively multimodal time series."""

import re
from pathlib import Path

from setuptools import find_packages, setup

# The version lives in modeling_merge/__init__.py (`modeling_merge.__version__`); read as text, not imported.
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "modeling_merge" / "__init__.py").read_text(
    encoding="utf-8"), re.MULTILINE).group(1)

EXTRAS = {
    # Exact discrete partial-information decomposition (convex program).
    "pid": ["cvxpy>=1.5", "clarabel>=0.9"],
    # RUS trajectories, routing maps.
    "plot": ["matplotlib>=3.8"],
    # Metrics beyond accuracy (macro-F1, AUROC) inside the local `evaluate` modules.
    "metrics": ["scikit-learn>=1.3"],
    # Experiment trackers for `examples/train.py --report_to` (Accelerate's TensorBoard tracker).
    "tracking": ["tensorboard>=2.14"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# The test suite needs every extra but the trackers (constraints/tested.txt pins exactly this set).
EXTRAS["dev"] = sorted({req for name in ("pid", "plot", "metrics") for req in EXTRAS[name]}) + ["pytest>=8", "hypothesis>=6"]

setup(
    name="modeling-merge",
    version=VERSION,
    description="MERGE: mixture-of-experts for massively multimodal time series, routed by temporal "
    "redundancy, uniqueness and synergy (RUS), native to Hugging Face transformers.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_merge", "modeling_merge.*", "dataset_builders", "dataset_builders.*"]),
    package_data={"modeling_merge": ["metrics/*/*.py", "templates/*.md"]},
    license_files=["LICENSE"],
    install_requires=[
        # torch is pinned loosely on purpose: install the CPU wheel first (`pip install torch==2.13.0`).
        "torch>=2.4",
        "transformers>=5,<6",
        "datasets>=4",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "evaluate>=0.4",
        "peft>=0.15",
        "numpy>=1.26",
        "tqdm>=4.66",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["merge-rus=modeling_merge.rus.cli:main"]},
)
