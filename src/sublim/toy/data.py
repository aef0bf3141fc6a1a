"""Digit images for the toy experiment: scikit-learn's embedded 8×8 digits, or MNIST from a file.

Pixels are scaled to [0, 1] and images flattened. The train/test split is a seeded shuffle, so
the same config always gives the same split.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from sublim.core.errors import SublimError
from sublim.core.files import file_digest
from sublim.toy.config import ToyDataConfig

N_CLASSES = 10
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class DigitData:
    """Flattened images in [0, 1] (float32) and integer labels, split into train and test."""

    name: str
    source: str
    sha256: str
    image_shape: tuple[int, int]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    def describe(self) -> dict[str, object]:
        return {"dataset": self.name, "source": self.source, "sha256": self.sha256,
                "image_shape": list(self.image_shape), "n_train": int(self.x_train.shape[0]),
                "n_test": int(self.x_test.shape[0]), "input_dim": self.input_dim,
                "pixel_range": [0.0, 1.0]}


def _digits() -> tuple[np.ndarray, np.ndarray, str, str]:
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target)
    digest = hashlib.sha256(np.ascontiguousarray(bunch.images).tobytes()).hexdigest()
    return images, labels, "sklearn.datasets.load_digits (8×8, pixels 0..16)", digest


def _open(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as exc:
        raise SublimError(f"cannot read {path} ({exc}): check the file or data.path") from exc


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (unsigned bytes): images (magic 0x803, N×rows×cols) or labels (0x801, N)."""
    raw = _open(path)
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise SublimError(
            f"{path} is not an IDX {kind} file (magic {raw[:4].hex() or 'missing'}, "
            f"expected {magic:08x}): pass the *-{kind}-idx* file or an .npz via data.path")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise SublimError(f"{path}: header says {dims} but the file holds {len(raw) - header} "
                          "bytes: the file is truncated or corrupt; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    for cand in (images.with_name(name), images.with_name(name.removesuffix(".gz")),
                 images.with_name(name if name.endswith(".gz") else name + ".gz")):
        if cand != images and cand.is_file():
            return cand
    raise SublimError(f"no labels IDX file beside {images} (looked for {name}): put the "
                      "matching *-labels-idx1-ubyte file next to it")


def _idx_pairs(directory: Path) -> list[tuple[Path, Path]]:
    images = sorted(p for p in directory.iterdir() if "images-idx3" in p.name
                    or "images.idx3" in p.name)
    if not images:
        raise SublimError(f"no *-images-idx3-ubyte file in {directory}: point data.path at the "
                          "MNIST IDX files or at an .npz with images and labels")
    # the same file gzipped and not: keep one
    seen: dict[str, Path] = {}
    for p in images:
        seen.setdefault(p.name.removesuffix(".gz"), p)
    return [(p, _labels_beside(p)) for p in seen.values()]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise SublimError(
                    f"{path} has no {' or '.join(repr(m) for m in missing)} array (it has "
                    f"{', '.join(z.files) or 'none'}): save images (N×28×28 uint8) and labels "
                    "(N,) under those names")
            return np.asarray(z["images"]), np.asarray(z["labels"])
    except (OSError, ValueError) as exc:
        raise SublimError(f"{path} is not a readable .npz ({exc}): pass an .npz or IDX files "
                          "via data.path") from exc


def _mnist(path_text: str) -> tuple[np.ndarray, np.ndarray, str, str]:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise SublimError(f"data.path {path} not found: pass an MNIST .npz (images, labels) or "
                          "IDX files, e.g. --set data.path=/path/to/mnist.npz")
    if path.is_dir():
        pairs = _idx_pairs(path)
    elif path.suffix == ".npz":
        images, labels = _npz(path)
        return images, labels, str(path), file_digest(path)
    else:
        pairs = [(path, _labels_beside(path))]
    imgs, labs = [], []
    for ip, lp in pairs:
        imgs.append(read_idx(ip, IDX_IMAGES_MAGIC))
        labs.append(read_idx(lp, IDX_LABELS_MAGIC))
        if imgs[-1].shape[0] != labs[-1].shape[0]:
            raise SublimError(f"{ip} has {imgs[-1].shape[0]} images but {lp} has "
                              f"{labs[-1].shape[0]} labels: use matching IDX files")
    files = [p for pair in pairs for p in pair]
    return (np.concatenate(imgs), np.concatenate(labs), ", ".join(str(p) for p in files),
            file_digest(*files))


def _check_and_scale(images: np.ndarray, labels: np.ndarray, where: str) -> np.ndarray:
    if images.ndim != 3:
        raise SublimError(f"{where}: images must be N×H×W (got shape {images.shape}): save them "
                          "as an N×28×28 uint8 array")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SublimError(f"{where}: labels must be a vector of {images.shape[0]} class ids (got "
                          f"shape {labels.shape}): save one label per image")
    if images.shape[0] < 2 * N_CLASSES:
        raise SublimError(f"{where}: only {images.shape[0]} images: the experiment needs at least "
                          f"{2 * N_CLASSES}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise SublimError(f"{where}: labels must be integers 0..9 (got {labels.dtype}, range "
                          f"{labels.min()}..{labels.max()}): fix the labels array")
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise SublimError(f"{where}: integer pixels must lie in 0..255: save uint8 images")
        return images.astype(np.float64) / 255.0
    if images.min() < 0 or images.max() > 1:
        raise SublimError(f"{where}: float pixels must lie in [0, 1] (got {images.min():.3g}.."
                          f"{images.max():.3g}): save uint8 images or scale them to [0, 1]")
    return images.astype(np.float64)


def load_digit_data(cfg: ToyDataConfig) -> DigitData:
    """Load, check, scale to [0, 1], shuffle with ``split_seed`` and split."""
    if cfg.dataset == "digits":
        images, labels, source, digest = _digits()
    else:
        images, labels, source, digest = _mnist(cfg.path)
        images = _check_and_scale(images, labels, f"data.path {cfg.path}")
    labels = labels.astype(np.int64)
    order = np.random.default_rng(cfg.split_seed).permutation(images.shape[0])
    if cfg.max_examples:
        order = order[: cfg.max_examples]
    n_test = max(1, round(len(order) * cfg.test_fraction))
    if len(order) - n_test < N_CLASSES:
        raise SublimError(f"data.max_examples={cfg.max_examples} leaves too few training images: "
                          "raise it or lower data.test_fraction")
    flat = images.reshape(images.shape[0], -1).astype(np.float32)
    test, train = order[:n_test], order[n_test:]
    return DigitData(cfg.dataset, source, digest, (int(images.shape[1]), int(images.shape[2])),
                     flat[train], labels[train], flat[test], labels[test])
