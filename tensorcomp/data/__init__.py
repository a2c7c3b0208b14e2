"""Data sets shipped with tensorcomp (see README.md here for provenance and licence)."""

from __future__ import annotations

from importlib import resources

import numpy as np


def mnist_5k() -> dict[str, np.ndarray]:
    """The bundled 5,000-digit MNIST subset: train_images (4000, 28, 28) uint8, train_labels,
    test_images (1000, 28, 28), test_labels."""
    with resources.files(__package__).joinpath("mnist_5k.npz").open("rb") as f:
        with np.load(f) as z:
            return {k: z[k] for k in z.files}
