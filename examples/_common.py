"""What the example scripts share: their standard flags and how they find data.

Not an example itself (the leading underscore keeps it out of the smoke tests); each
script imports it from its own folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.data.datasets import Dataset, load_available

DATA_HELP = "auto (MNIST-10k if its files are present, else digits), or any dataset name: mnist10k, mnist, digits, ..."


def example_parser(doc: str, name: str, smoke_help: str, data: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``--smoke``, ``--out examples/out/<name>`` and (if ``data``) ``--data``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--out", type=Path, default=Path("examples/out") / name, help="output folder")
    if data:
        parser.add_argument("--data", default="auto", help=DATA_HELP)
    return parser


def add_scoring_flags(parser: argparse.ArgumentParser, latent_dim: int, epochs: int) -> None:
    """``--latent-dim``, ``--epochs``, ``--samples`` (K at evaluation) and ``--points`` (test points scored)."""
    parser.add_argument("--latent-dim", type=int, default=latent_dim)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--samples", type=int, default=1000, help="K at evaluation")
    parser.add_argument("--points", type=int, default=1000, help="test points scored")


def parse_scoring_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse flags from :func:`add_scoring_flags`; ``--smoke`` shrinks them to seconds of work. Creates ``--out``."""
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.samples, args.points, args.latent_dim = 1, 20, 50, 4
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def load(name: str, smoke: bool) -> Dataset:
    """The named dataset; smoke runs take slices of every split (the same code path, seconds to run)."""
    dataset = load_available(name)
    return dataset.head(500, 200, 200) if smoke else dataset
