"""Data sets shipped with tensorcomp (see README.md here for provenance and licence)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from ..errors import ArgumentError, DtypeError, ShapeError


def mnist_5k() -> dict[str, np.ndarray]:
    """The bundled 5,000-digit MNIST subset: train_images (4000, 28, 28) uint8, train_labels,
    test_images (1000, 28, 28), test_labels."""
    with resources.files(__package__).joinpath("mnist_5k.npz").open("rb") as f:
        with np.load(f) as z:
            return {k: z[k] for k in z.files}


def _read_idx(path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` axes (gzipped or not), its header checked."""
    import gzip
    import zlib
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ArgumentError(f"mnist: cannot read {path} ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ArgumentError(f"mnist: {path} is not an IDX file (its first bytes are not the IDX magic 00 00)")
    if data[2] != 0x08:
        raise DtypeError(f"mnist: {path} holds IDX type 0x{data[2]:02x}; MNIST files hold unsigned bytes (0x08)")
    if data[3] != ndim:
        raise ShapeError(f"mnist: {path} has {data[3]} axes; expected {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ShapeError(f"mnist: {path} ends inside its header ({len(data)} bytes)")
    dims = [int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    need = int(np.prod(dims, dtype=object))
    if len(data) - header != need:
        raise ShapeError(f"mnist: {path} says {'x'.join(map(str, dims))} = {need} bytes of data but holds "
                         f"{len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def mnist(root=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels): images float32 (N, 1, 28, 28) in [0, 1],
    labels int64. From the standard IDX files (gzipped or not) in ``root`` when given, else the
    bundled 4,000/1,000 subset."""
    if root is None:
        d = mnist_5k()
        tr, trl, te, tel = d["train_images"], d["train_labels"], d["test_images"], d["test_labels"]
    else:
        from pathlib import Path
        base = Path(root)

        def find(stem: str) -> Path:
            for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
                if (base / name).exists():
                    return base / name
            raise ArgumentError(f"mnist: no {stem}[.gz] in {base}")
        if not base.is_dir():
            raise ArgumentError(f"mnist: {base} is not a directory (--data takes the directory of the IDX files)")
        tr = _read_idx(find("train-images-idx3-ubyte"), 3)
        trl = _read_idx(find("train-labels-idx1-ubyte"), 1)
        te = _read_idx(find("t10k-images-idx3-ubyte"), 3)
        tel = _read_idx(find("t10k-labels-idx1-ubyte"), 1)
        for images, labels, what in ((tr, trl, "train"), (te, tel, "t10k")):
            if images.shape[1:] != (28, 28):
                raise ShapeError(f"mnist: the {what} images are {images.shape[1]}x{images.shape[2]}; MNIST's are 28x28")
            if len(images) != len(labels) or not len(images):
                raise ShapeError(f"mnist: {len(images)} {what} images but {len(labels)} labels")
            if labels.max() > 9:
                k = int(np.argmax(labels > 9))
                raise ArgumentError(f"mnist: {what} label {k} is {labels[k]}; MNIST labels are 0..9")
    def prep(x):
        return (x.astype(np.float32) / 255.0).reshape(len(x), 1, 28, 28)
    return prep(tr), trl.astype(np.int64), prep(te), tel.astype(np.int64)


class DataLoader:
    """Mini-batches of (x, y) arrays; shuffled with a seeded generator each epoch when ``shuffle``.

    With ``ranks`` > 1 (data-parallel training, see ``tensorcomp.distributed``), ``batch_size`` is the
    global batch and each rank gets its own contiguous shard of every global batch (sizes differing by
    at most one; every rank draws the same order from the same seed), so the ranks together see the
    same samples per step as one process; ``global_batch`` is the size of the last global batch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, ranks: int = 1) -> None:
        for what, a in (("x", x), ("y", y)):
            if not isinstance(a, np.ndarray) or a.ndim < 1:
                raise ArgumentError(f"DataLoader: {what} must be a numpy array with a leading sample axis, got "
                                    f"{type(a).__name__}{f' of shape {a.shape}' if isinstance(a, np.ndarray) else ''}")
        if len(x) != len(y):
            raise ShapeError(f"DataLoader: {len(x)} inputs but {len(y)} targets")
        for what, v in (("batch_size", batch_size), ("rank", rank), ("ranks", ranks), ("seed", seed)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ArgumentError(f"DataLoader: {what} must be a non-negative int, got {v!r}")
        if batch_size < 1:
            raise ShapeError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < ranks:
            raise ArgumentError(f"DataLoader: rank must be in 0..ranks-1 ({ranks} ranks), got {rank}")
        if batch_size < ranks:
            raise ShapeError(f"DataLoader: a global batch of {batch_size} cannot be shared by {ranks} ranks; use "
                             f"batch_size >= {ranks}")
        self.x, self.y, self.batch_size, self.shuffle, self.drop_last = x, y, batch_size, shuffle, drop_last
        self.rank, self.ranks = rank, ranks
        self.global_batch = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.x) // self.batch_size if self.drop_last else -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            self.global_batch = n = len(idx)
            if self.ranks > 1:
                idx = idx[n * self.rank // self.ranks:n * (self.rank + 1) // self.ranks]
            yield self.x[idx], self.y[idx]
