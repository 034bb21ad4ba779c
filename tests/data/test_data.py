"""Tests for pyro_vae.data.datasets: offline, self-contained (synthetic idx files), fast."""

from __future__ import annotations

import gzip
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.data.transforms import BINARIZE_MODES, DataTransform, iterate_minibatches, minibatch_indices
from pyro_vae.data.datasets import DATASETS, Dataset, load_dataset


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    """Write a uint8 array in the idx format of the original MNIST files."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb", compresslevel=1) as f:
            f.write(header + arr.tobytes())
    else:
        path.write_bytes(header + arr.tobytes())


def fake_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first two pixels encode their index, so order is checkable."""
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) if n <= 1000 else np.zeros((n, 28, 28), np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x, (np.arange(n) % 10).astype(np.uint8)


def write_split(folder: Path, prefix: str, n: int, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = fake_images(n)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", x, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", y, gz)
    return x, y


def index_of(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0, 0, 0] + 256 * x[:, 0, 0, 1]).long()


def rows(x: torch.Tensor) -> Counter:
    return Counter(r.numpy().tobytes() for r in x.reshape(len(x), -1))


# --------------------------------------------------------------------------- digits


def test_digits_shapes_levels_and_partition():
    from sklearn.datasets import load_digits

    d = load_digits()
    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1437, 180, 180)
    assert ds.levels == 17 and ds.event_shape == (8, 8) and ds.num_dims == 64
    assert ds.train.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    assert ds.train.min() == 0 and ds.train.max() == 16 and bool((ds.train == ds.train.round()).all())
    # The three splits are a partition of the 1797 images (with their labels).
    all_x = torch.cat([ds.train, ds.val, ds.test])
    assert rows(all_x) == rows(torch.as_tensor(d.images, dtype=torch.float32))
    all_y = torch.cat([ds.train_labels, ds.val_labels, ds.test_labels])
    assert Counter(all_y.tolist()) == Counter(d.target.tolist())
    x, y = ds.split("val")
    assert x is ds.val and y is ds.val_labels
    assert "digits" in repr(ds) and "train=1437" in repr(ds)


def test_digits_split_is_fixed_and_only_depends_on_split_seed():
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = load_dataset("digits")
    assert torch.equal(torch.get_rng_state(), state), "loading must not consume the global RNG"
    torch.manual_seed(999)
    b = load_dataset("digits")
    for s in ("train", "val", "test"):
        assert torch.equal(getattr(a, s), getattr(b, s))
        assert torch.equal(getattr(a, f"{s}_labels"), getattr(b, f"{s}_labels"))
    c = load_dataset("digits", split_seed=1)
    assert not torch.equal(a.test, c.test)


def test_digits_fractions():
    ds = load_dataset("digits", val_fraction=0.2, test_fraction=0.3)
    assert (len(ds.val), len(ds.test)) == (round(1797 * 0.2), round(1797 * 0.3))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    with pytest.raises(ValueError, match="fractions"):
        load_dataset("digits", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="empty"):
        load_dataset("digits", val_fraction=0.0)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as e:
        load_dataset("cifar")
    for name in DATASETS + (".npy", ".npz", ".pt"):
        assert name in str(e.value)


# --------------------------------------------------------------------------- MNIST family


def test_mnist_official_torchvision_layout(tmp_path, monkeypatch):
    # What a torchvision download leaves: .gz plus extracted files in MNIST/raw.
    raw = tmp_path / "MNIST" / "raw"
    for gz in (True, False):
        x_train, y_train = write_split(raw, "train", 50, gz=gz)
        x_test, y_test = write_split(raw, "t10k", 20, gz=gz)

    def no_fallback(*args):
        raise AssertionError("torchvision's own class should have loaded these files")

    monkeypatch.setattr("pyro_vae.data.datasets._read_idx", no_fallback)
    ds = load_dataset("mnist", root=str(tmp_path), download=False)
    assert ds.event_shape == (1, 28, 28) and ds.levels == 256 and ds.num_dims == 784
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45, 5, 20)
    # val is the (unshuffled) tail of the official training set, test the official test set.
    assert index_of(ds.train).tolist() == list(range(45))
    assert index_of(ds.val).tolist() == list(range(45, 50))
    assert torch.equal(ds.test[:, 0], torch.as_tensor(x_test, dtype=torch.float32))
    assert torch.equal(ds.val_labels, torch.as_tensor(y_train[45:], dtype=torch.int64))
    assert ds.train.dtype == torch.float32 and ds.test_labels.dtype == torch.int64


def test_mnist_gz_only_raw_folder_falls_back(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_split(raw, "train", 30, gz=True)
    x_test, _ = write_split(raw, "t10k", 10, gz=True)
    ds = load_dataset("mnist", root=str(tmp_path), download=False, val_fraction=0.2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 10)
    assert torch.equal(ds.test[:, 0], torch.as_tensor(x_test, dtype=torch.float32))
    assert not any(p.suffix == "" for p in raw.iterdir()), "must not write into the data folder"


def test_fashion_mnist_flat_lowercase_folder(tmp_path):
    write_split(tmp_path / "fashion_mnist", "train", 20, gz=False)
    write_split(tmp_path / "fashion_mnist", "t10k", 10, gz=True)
    ds = load_dataset("fashion_mnist", root=str(tmp_path), download=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 10)


def test_mnist10k_from_flat_t10k_gz(tmp_path, monkeypatch):
    x, y = write_split(tmp_path, "t10k", 10000, gz=True)  # only the test files, as on our machines
    ds = load_dataset("mnist10k", root=str(tmp_path), download=False)
    assert ds.train.shape == (8000, 1, 28, 28) and ds.test.shape == (2000, 1, 28, 28)
    assert ds.levels == 256 and ds.val_is_test and ds.val is ds.test and ds.val_labels is ds.test_labels
    assert index_of(ds.train).tolist() == list(range(8000))
    assert index_of(ds.test).tolist() == list(range(8000, 10000))
    assert torch.equal(ds.test_labels, torch.as_tensor(y[8000:], dtype=torch.int64))
    # root=None honours PYRO_VAE_DATA before any other location.
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))
    again = load_dataset("mnist10k", download=False)
    assert torch.equal(again.train, ds.train)


def test_mnist10k_rejects_wrong_size(tmp_path):
    write_split(tmp_path, "t10k", 20, gz=True)
    with pytest.raises(ValueError, match="10000"):
        load_dataset("mnist10k", root=str(tmp_path), download=False)


def test_missing_files_error_names_dataset_paths_and_fixes(tmp_path, monkeypatch):
    empty = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist10k", root=str(empty), download=False)
    msg = str(e.value)
    for needle in ("mnist10k", str(empty), str(empty / "MNIST" / "raw"), "t10k-images-idx3-ubyte",
                   "download=True", "--data-root", "root="):
        assert needle in msg, needle
    # A failed download (no internet here, or a fake one) must not leave empty folders behind.
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("offline")))
    with pytest.raises(FileNotFoundError, match="offline"):
        load_dataset("mnist", root=str(empty), download=True)
    assert not empty.exists()
    write_split(tmp_path / "only_test", "t10k", 5, gz=True)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("kmnist", root=str(tmp_path / "only_test"), download=False)


# --------------------------------------------------------------------------- user files


def test_npy_levels_and_fixed_split(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(30, 4, 4)).astype(np.uint8)
    np.save(tmp_path / "u8.npy", x)
    ds = load_dataset(str(tmp_path / "u8.npy"))
    assert ds.levels == 256 and ds.event_shape == (4, 4) and ds.train_labels is None
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 3, 3)
    assert rows(torch.cat([ds.train, ds.val, ds.test])) == rows(torch.as_tensor(x, dtype=torch.float32))
    np.save(tmp_path / "i16.npy", (x % 10).astype(np.int16))
    assert load_dataset(str(tmp_path / "i16.npy")).levels == 10
    np.save(tmp_path / "f.npy", x.astype(np.float64) / 255)
    f = load_dataset(str(tmp_path / "f.npy"))
    assert f.levels is None and f.train.dtype == torch.float32


def test_npy_bad_files(tmp_path):
    bad = np.random.default_rng(0).normal(size=(20, 5))
    bad[3, 1], bad[7, 4], bad[7, 0] = np.nan, np.inf, np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError) as e:
        load_dataset(str(tmp_path / "nan.npy"))
    assert "3 non-finite" in str(e.value) and "2 NaN" in str(e.value) and "[3, 7]" in str(e.value)
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    with pytest.raises(ValueError, match="at least 2 dims"):
        load_dataset(str(tmp_path / "flat.npy"))
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        load_dataset(str(tmp_path / "obj.npy"))
    np.save(tmp_path / "neg.npy", -np.ones((5, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        load_dataset(str(tmp_path / "neg.npy"))
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "missing.npz"))


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    tr, va, te = (rng.integers(0, 4, size=(n, 3)).astype(np.int64) for n in (10, 4, 5))
    np.savez(tmp_path / "s.npz", train=tr, val=va, test=te, train_labels=np.arange(10), test_labels=np.zeros(5, int))
    ds = load_dataset(str(tmp_path / "s.npz"))
    assert ds.levels == 4 and (len(ds.train), len(ds.val), len(ds.test)) == (10, 4, 5)
    assert ds.train_labels.tolist() == list(range(10)) and ds.val_labels is None
    np.savez(tmp_path / "x.npz", x=rng.normal(size=(20, 2, 3)), y=np.arange(20))
    ds = load_dataset(str(tmp_path / "x.npz"))
    assert ds.levels is None and ds.event_shape == (2, 3) and len(ds.test_labels) == 2
    np.savez(tmp_path / "arr.npz", rng.normal(size=(20, 2)))  # saved as arr_0
    assert len(load_dataset(str(tmp_path / "arr.npz")).train) == 16
    np.savez(tmp_path / "typo.npz", train=tr, valid=va, test=te)
    with pytest.raises(ValueError, match="valid"):
        load_dataset(str(tmp_path / "typo.npz"))
    np.savez(tmp_path / "badlab.npz", x=tr, y=np.arange(3))
    with pytest.raises(ValueError, match="labels of shape"):
        load_dataset(str(tmp_path / "badlab.npz"))


def test_pt_tensor_and_dict(tmp_path):
    torch.save(torch.rand(40, 6), tmp_path / "t.pt")
    ds = load_dataset(str(tmp_path / "t.pt"), split_seed=3)
    assert ds.levels is None and (len(ds.train), len(ds.val), len(ds.test)) == (32, 4, 4)
    d = {"train": torch.randint(0, 256, (8, 2), dtype=torch.uint8), "val": torch.zeros(2, 2, dtype=torch.uint8),
         "test": torch.ones(3, 2, dtype=torch.uint8), "test_labels": torch.arange(3)}
    torch.save(d, tmp_path / "d.pt")
    ds = load_dataset(str(tmp_path / "d.pt"))
    assert ds.levels == 256 and ds.test_labels.tolist() == [0, 1, 2]
    torch.save({"train": np.zeros((4, 2))}, tmp_path / "np.pt")
    with pytest.raises(ValueError, match="tensor or a dict of tensors"):
        load_dataset(str(tmp_path / "np.pt"))
    torch.save({"train": torch.zeros(4, 2), "val": torch.zeros(2, 2, dtype=torch.int64), "test": torch.zeros(2, 2)},
               tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="mix float and integer"):
        load_dataset(str(tmp_path / "mixed.pt"))


def test_dataset_to_keeps_val_is_test(tmp_path):
    write_split(tmp_path, "t10k", 10000, gz=True)
    ds = load_dataset("mnist10k", root=str(tmp_path), download=False).to("cpu")
    assert ds.val is ds.test and ds.val_is_test


def test_dataset_validates_on_construction():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="empty"):
        Dataset("t", x, torch.zeros(0, 3), x, None, None, None, None, (3,))
    with pytest.raises(ValueError, match="levels"):
        Dataset("t", x + 0.5, x, x, None, None, None, 4, (3,))


# --------------------------------------------------------------------------- DataTransform


@pytest.fixture
def mnist_like() -> torch.Tensor:
    return torch.randint(0, 256, (600, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float()


def test_dynamic_binarization(mnist_like):
    t = DataTransform(256, binarize="dynamic")
    unit_mean = (mnist_like / 255).mean().item()
    a, b = t(mnist_like), t(mnist_like)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and a.shape == mnist_like.shape
    assert abs(a.mean().item() - unit_mean) < 0.005
    assert not torch.equal(a, b)
    torch.manual_seed(5)
    c = t(mnist_like)
    torch.manual_seed(5)
    assert torch.equal(c, t(mnist_like)), "training draws come from the global RNG"
    state = torch.get_rng_state()
    e1, e2 = t(mnist_like, train=False), t(mnist_like, train=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(e1, e2) and abs(e1.mean().item() - unit_mean) < 0.005
    assert torch.equal(t(mnist_like[100:150], train=False), e1[100:150]), "eval draw must not depend on batching"
    assert t.is_binary and t.density_levels is None and "dynamic" in t.describe()


def test_static_binarization(mnist_like):
    t = DataTransform(256, binarize="static", seed=0)
    a = t(mnist_like)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, t(mnist_like)) and torch.equal(a, DataTransform(256, "static", seed=0)(mnist_like))
    perm = torch.randperm(len(mnist_like))[:64]
    assert torch.equal(t(mnist_like[perm]), a[perm]), "same datapoint -> same binary image in any minibatch"
    assert abs(a.mean().item() - (mnist_like / 255).mean().item()) < 0.005
    assert not torch.equal(a, DataTransform(256, "static", seed=1)(mnist_like))
    # Pixels of one image are not all driven by one shared draw.
    grey = torch.full((400, 1, 28, 28), 128.0)
    grey[:, 0, 0, 0], grey[:, 0, 0, 1] = torch.arange(400.0) % 256, torch.arange(400.0) // 256  # distinct images
    variance_ratio = t(grey).mean(dim=(1, 2, 3)).var().item() / (0.25 / 784)
    assert 0.6 < variance_ratio < 1.6


def test_threshold_and_levels_and_plain(mnist_like):
    x = mnist_like[:10]
    assert torch.equal(DataTransform(256, binarize="threshold")(x), (x / 255 > 0.5).float())
    assert torch.equal(DataTransform(256, as_levels=True)(x), x)
    assert torch.allclose(DataTransform(256)(x), x / 255)
    assert DataTransform(17)(torch.tensor([[16.0, 8.0]])).tolist() == [[1.0, 0.5]]
    cont = torch.rand(5, 3) * 4 - 2
    assert torch.equal(DataTransform(None)(cont), cont)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        DataTransform(None, binarize="threshold")(cont)


@pytest.mark.parametrize("levels", [256, 17])
def test_dequantization(levels):
    x = torch.randint(0, levels, (500, 64), generator=torch.Generator().manual_seed(1)).float()
    x[0] = levels - 1
    x[1] = 0
    t = DataTransform(levels, dequantize=True)
    for y in (t(x), t(x, train=False)):
        y64 = y.double()
        assert y.dtype == torch.float32
        assert bool((y64 >= x.double() / levels).all()) and bool((y64 < (x.double() + 1) / levels).all())
        assert torch.equal(torch.floor(y64 * levels), x.double())
        assert abs((y64 * levels - x).mean().item() - 0.5) < 0.01
    assert not torch.equal(t(x), t(x))
    assert torch.equal(t(x, train=False), t(x, train=False))
    assert torch.equal(t(x[7:20], train=False), t(x, train=False)[7:20])
    assert t.density_levels == levels and not t.is_binary and "dequantized" in t.describe()


@pytest.mark.parametrize("levels", [3, 17, 100, 256])
@pytest.mark.parametrize("u", [0.0, 1 - 1e-12])
def test_dequantization_bin_edges_survive_float32(levels, u, monkeypatch):
    # u at the edges of [0, 1) is where float32 rounding would cross into the next bin.
    t = DataTransform(levels, dequantize=True)
    monkeypatch.setattr(t, "_uniform", lambda x, salt: torch.full(x.shape, u, dtype=torch.float64))
    x = torch.arange(float(levels)).unsqueeze(0)
    assert torch.equal(torch.floor(t(x, train=False).double() * levels), x.double())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(levels=256, binarize="dynamic", dequantize=True), "conflict"),
        (dict(levels=None, dequantize=True), "needs quantized"),
        (dict(levels=256, binarize="static", as_levels=True), "as_levels"),
        (dict(levels=None, as_levels=True), "as_levels"),
        (dict(levels=256, dequantize=True, as_levels=True), "as_levels"),
        (dict(levels=256, binarize="random"), "binarize"),
        (dict(levels=1), "levels"),
    ],
)
def test_invalid_transform_combos(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataTransform(**kwargs)


def test_binarize_modes_constant():
    assert BINARIZE_MODES == ("none", "dynamic", "static", "threshold")
    for mode in BINARIZE_MODES:
        assert isinstance(DataTransform(256, binarize=mode).describe(), str)


# --------------------------------------------------------------------------- minibatches


def test_minibatches_cover_each_index_once():
    x = torch.arange(103.0).unsqueeze(1)
    labels = torch.arange(103)
    batches = list(iterate_minibatches(x, 10, seed=0, epoch=0, labels=labels))
    assert [len(b[0]) for b in batches] == [10] * 10 + [3]
    seen = torch.cat([xb[:, 0] for xb, _ in batches]).long()
    assert sorted(seen.tolist()) == list(range(103))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in batches)
    assert seen.tolist() != list(range(103)), "shuffled"
    again = torch.cat(list(iterate_minibatches(x, 10, seed=0, epoch=0)))[:, 0]
    assert torch.equal(again.long(), seen), "order is a pure function of (seed, epoch)"
    other = torch.cat(list(iterate_minibatches(x, 10, seed=0, epoch=1)))[:, 0]
    assert not torch.equal(other.long(), seen)
    assert not torch.equal(torch.cat(list(iterate_minibatches(x, 10, seed=1, epoch=0)))[:, 0].long(), seen)
    dropped = list(iterate_minibatches(x, 10, seed=0, epoch=0, drop_last=True))
    assert [len(b) for b in dropped] == [10] * 10
    ordered = torch.cat(list(iterate_minibatches(x, 7, seed=0, epoch=3, shuffle=False)))[:, 0]
    assert ordered.long().tolist() == list(range(103))


def test_minibatches_ranks_shard_the_data():
    x = torch.arange(100.0).unsqueeze(1)
    shards = [torch.cat(list(iterate_minibatches(x, 8, seed=2, epoch=4, rank=r, world_size=2)))[:, 0].long()
              for r in range(2)]
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(shards[0].tolist() + shards[1].tolist()) == list(range(100))
    # Odd sizes: DistributedSampler pads so both ranks get equal work; everything is still covered.
    idx = [torch.cat(minibatch_indices(101, 8, seed=2, epoch=4, rank=r, world_size=2)) for r in range(2)]
    assert [len(i) for i in idx] == [51, 51] and set(torch.cat(idx).tolist()) == set(range(101))
    with pytest.raises(ValueError):
        minibatch_indices(10, 2, seed=0, epoch=0, rank=2, world_size=2)


def test_head_slices_every_split_and_keeps_pairs():
    from pyro_vae.data.datasets import load_dataset

    full = load_dataset("digits")
    small = full.head(50, 20, 10)
    assert (len(small.train), len(small.val), len(small.test)) == (50, 20, 10)
    assert torch.equal(small.train, full.train[:50]) and torch.equal(small.test_labels, full.test_labels[:10])
    assert small.levels == full.levels and small.event_shape == full.event_shape


def test_load_available_falls_back_to_digits(monkeypatch, tmp_path):
    from pyro_vae.data import datasets as data

    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))  # an empty root: no MNIST files anywhere it looks
    monkeypatch.setattr(data, "_mnist10k_roots", lambda: [tmp_path])
    assert data.load_available("auto").name == "digits"
    assert data.load_available("digits").levels == 17
