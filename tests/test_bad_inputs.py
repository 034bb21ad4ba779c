"""A battery of bad inputs (issue 16: "nothing silent, nothing lost").

Every case must fail with a specific exception type whose message is one line, names
the field or file and the fix, and is raised by pyro_vae's own code (the last frame of
the traceback lies in ``pyro_vae/``), never deep inside torch, pyro or numpy. CLI cases
must exit with status 2 and a one-line ``pyro-vae <command>: error: ...``.
"""

from __future__ import annotations

import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from pyro_vae.objectives.elbo import ELBO
from pyro_vae import cli
from pyro_vae.runs.build import DataShape, build_vae
from pyro_vae.core.errors import CheckpointError
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.core.errors import ConfigError
from pyro_vae.runs.config import from_dict, load
from pyro_vae.data.datasets import Dataset, load_dataset
from pyro_vae.objectives.iwae import IWAE
from pyro_vae.estimators.importance import evaluate
from pyro_vae.runs.rundir import load_model
from pyro_vae.data.transforms import DataTransform
from pyro_vae.models.vae import VAE

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"
EXPECTED = (ValueError, TypeError, FileNotFoundError, CheckpointError, ConfigError)


def assert_clear(exc: BaseException, *words: str, multiline: bool = False) -> None:
    """One line naming ``words``, raised from pyro_vae, and no advice to unpickle untrusted files."""
    message = str(exc)
    line = message.splitlines()[0] if multiline else message
    assert isinstance(exc, EXPECTED), type(exc)
    assert multiline or "\n" not in message, message
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert "weights_only=False" not in message and "add_safe_globals" not in message
    last = traceback.extract_tb(exc.__traceback__)[-1].filename
    assert Path(last).resolve().is_relative_to(PACKAGE), f"raised from {last}"


# --------------------------------------------------------------------------- data files


def noise(n: int) -> bytes:
    """Reproducible random bytes (a fixed seed: a lucky magic number cannot make a case flaky)."""
    return np.random.default_rng(n).bytes(n)


def ints_with(value, dtype=np.int64):
    a = np.zeros((20, 3), dtype=dtype)
    a[4, 1] = value
    return a


def floats_with(*values):
    a = np.random.default_rng(0).random((20, 3))
    for i, v in enumerate(values):
        a[2 + i, 1] = v
    return a


def real_bytes(suffix: str, tmp: Path) -> bytes:
    a = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    f = tmp / f"real{suffix}"
    {".npy": lambda: np.save(f, a), ".npz": lambda: np.savez(f, x=a), ".pt": lambda: torch.save(torch.from_numpy(a), f)}[suffix]()
    return f.read_bytes()


def save(array_or_obj):
    def write(path: Path) -> None:
        if path.suffix == ".npy":
            np.save(path, array_or_obj, allow_pickle=array_or_obj.dtype == object)
        elif path.suffix == ".npz":
            np.savez(path, **array_or_obj)
        else:
            torch.save(array_or_obj, path)
    return write


def raw(make_bytes):
    return lambda path: path.write_bytes(make_bytes(path))


FILE_CASES = [
    pytest.param(".npy", save(ints_with(10**7)), ("65536", "store continuous data as float"), id="npy-int-1e7-levels"),
    pytest.param(".npy", save(ints_with(2**63, np.uint64)), ("65536",), id="npy-uint64-huge-levels"),
    pytest.param(".npy", save(ints_with(65536, np.int32)), ("65537 levels",), id="npy-int-one-level-too-many"),
    pytest.param(".npy", save(floats_with(1e300)), ("exceed the float32 range", "rows [2]"), id="npy-float64-1e300"),
    pytest.param(".npy", save(floats_with(-1e300, 1e39)), ("2 values exceed the float32 range",), id="npy-float64-both-signs"),
    pytest.param(".npy", save(floats_with(np.nan)), ("non-finite", "1 NaN"), id="npy-nan"),
    pytest.param(".npy", save(floats_with(np.inf, 1e300)), ("exceed the float32 range",), id="npy-inf-and-overflow"),
    pytest.param(".npy", save(floats_with(-np.inf)), ("non-finite", "1 inf"), id="npy-minus-inf"),
    pytest.param(".npy", save(-np.ones((5, 2), dtype=np.int32)), (">= 0",), id="npy-negative-ints"),
    pytest.param(".npy", save(np.arange(10.0)), ("at least 2 dims",), id="npy-1d"),
    pytest.param(".npy", save(np.array([[1, "a"]], dtype=object)), ("object arrays",), id="npy-object"),
    pytest.param(".npy", save(np.ones((5, 2), dtype=np.complex64)), ("unsupported dtype",), id="npy-complex"),
    pytest.param(".npy", save(np.array([["a", "b"]] * 5)), ("unsupported dtype",), id="npy-strings"),
    pytest.param(".npy", save(np.zeros((0, 3), dtype=np.float32)), ("empty",), id="npy-no-rows"),
    pytest.param(".npy", save(np.zeros((2, 3), dtype=np.float32)), ("split is empty",), id="npy-two-rows"),
    pytest.param(".npy", raw(lambda p: b""), ("empty (0 bytes)",), id="npy-zero-bytes"),
    pytest.param(".npy", raw(lambda p: real_bytes(".npy", p.parent)[:400]), ("truncated or corrupt",), id="npy-truncated-data"),
    pytest.param(".npy", raw(lambda p: real_bytes(".npy", p.parent)[:20]), ("truncated or corrupt",), id="npy-truncated-header"),
    pytest.param(".npy", raw(lambda p: noise(300)), ("not a .npy file",), id="npy-random-bytes"),
    pytest.param(".npy", raw(lambda p: b"1,2,3\n4,5,6\n"), ("not a .npy file", "numpy.save"), id="npy-csv-text"),
    pytest.param(".npy", raw(lambda p: real_bytes(".npz", p.parent)), ("not a .npy file",), id="npy-is-really-npz"),
    pytest.param(".npz", raw(lambda p: b""), ("empty (0 bytes)",), id="npz-zero-bytes"),
    pytest.param(".npz", raw(lambda p: real_bytes(".npz", p.parent)[:300]), ("truncated or corrupt",), id="npz-truncated"),
    pytest.param(".npz", raw(lambda p: noise(300)), ("not a .npz file",), id="npz-random-bytes"),
    pytest.param(".npz", save({"train": np.ones((4, 2)), "valid": np.ones((2, 2)), "test": np.ones((2, 2))}),
                 ("match no layout",), id="npz-unknown-key"),
    pytest.param(".npz", save({"x": np.ones((6, 2)), "y": np.arange(3)}), ("labels of shape",), id="npz-short-labels"),
    pytest.param(".npz", save({"x": np.ones((6, 2)), "y": np.ones(6)}), ("integer labels",), id="npz-float-labels"),
    pytest.param(".npz", save({"train": np.ones((4, 2)), "val": np.ones((2, 2), int), "test": np.ones((2, 2))}),
                 ("mix float and integer",), id="npz-mixed-dtypes"),
    pytest.param(".npz", save({"x": ints_with(10**6)}), ("65536",), id="npz-int-levels-cap"),
    pytest.param(".npz", save({"x": floats_with(1e300)}), ("float32 range",), id="npz-float64-overflow"),
    pytest.param(".pt", raw(lambda p: b""), ("empty (0 bytes)",), id="pt-zero-bytes"),
    pytest.param(".pt", raw(lambda p: real_bytes(".pt", p.parent)[:500]), ("truncated or corrupt",), id="pt-truncated"),
    pytest.param(".pt", raw(lambda p: b"hello, I am text\n"), ("truncated or corrupt", "not written by torch.save"),
                 id="pt-text"),
    pytest.param(".pt", raw(lambda p: noise(300)), ("truncated or corrupt",), id="pt-random-bytes"),
    pytest.param(".pt", save({"train": np.zeros((4, 2))}), ("tensor or a dict of tensors", "safe loader"), id="pt-numpy-inside"),
    pytest.param(".pt", save(torch.ones(5, 2, dtype=torch.complex64)), ("unsupported dtype",), id="pt-complex"),
    pytest.param(".pt", save([1, 2, 3]), ("expected an array/tensor",), id="pt-list"),
    pytest.param(".pt", save(torch.from_numpy(ints_with(10**7))), ("65536",), id="pt-int-levels-cap"),
    pytest.param(".pt", save(torch.from_numpy(floats_with(1e300))), ("float32 range",), id="pt-float64-overflow"),
]


@pytest.mark.parametrize("suffix, write, words", FILE_CASES)
def test_bad_data_file(tmp_path, suffix, write, words):
    path = tmp_path / f"data{suffix}"
    write(path)
    with pytest.raises(ValueError) as err:
        load_dataset(str(path))
    assert_clear(err.value, str(path), *words)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(str(tmp_path / "missing.npz"))
    assert_clear(err.value, "missing.npz", "not found")
    with pytest.raises(FileNotFoundError) as err:  # deliberately multi-line: it lists the folders searched
        load_dataset("mnist", root=str(tmp_path), download=False)
    assert_clear(err.value, "'mnist'", "train-images-idx3-ubyte", multiline=True)


def test_good_edge_files_still_load(tmp_path):
    np.save(tmp_path / "u16.npy", ints_with(65535, np.uint16))
    assert load_dataset(str(tmp_path / "u16.npy")).levels == 65536
    np.save(tmp_path / "f64.npy", floats_with(3e38))
    assert torch.isfinite(load_dataset(str(tmp_path / "f64.npy")).train).all()


# --------------------------------------------------------------------------- checkpoints


def tiny_state() -> dict:
    cfg = from_dict({"model": {"latent_dim": 2, "net": {"hidden": [4]}}})
    vae = build_vae(cfg, DataShape((8, 8), 17))
    return {"config": asdict(cfg), "model": vae.state_dict(), "epoch": 1, "data_shape": DataShape((8, 8), 17).to_dict()}


def write_checkpoint(make):
    def write(path: Path) -> None:
        state = tiny_state()
        save_checkpoint(path.parent / "good.pt", state)
        result = make(path, state, (path.parent / "good.pt").read_bytes())
        if isinstance(result, bytes):
            path.write_bytes(result)
    return write


def wrong_shapes(path, state, good):
    state["model"][next(iter(state["model"]))] = torch.ones(3)
    save_checkpoint(path, state)


CHECKPOINT_CASES = [
    pytest.param(write_checkpoint(lambda p, s, good: b""), CheckpointError, ("corrupt or truncated", "empty"), id="zero-bytes"),
    pytest.param(write_checkpoint(lambda p, s, good: good[: len(good) // 2]), CheckpointError, ("corrupt or truncated",),
                 id="truncated-half"),
    pytest.param(write_checkpoint(lambda p, s, good: good[:10]), CheckpointError, ("corrupt or truncated",), id="truncated-10-bytes"),
    pytest.param(write_checkpoint(lambda p, s, good: good[:200] + bytes(200) + good[400:]), CheckpointError,
                 ("checkpoint.pt",), id="damaged-middle"),
    pytest.param(write_checkpoint(lambda p, s, good: noise(2000)), CheckpointError, ("not written by torch.save",),
                 id="random-bytes"),
    pytest.param(write_checkpoint(lambda p, s, good: b"epoch: 3\nmodel: weights\n"), CheckpointError,
                 ("not written by torch.save",), id="text-file"),
    pytest.param(write_checkpoint(lambda p, s, good: torch.save(torch.ones(3), p)), CheckpointError,
                 ("not a pyro_vae checkpoint",), id="plain-tensor"),
    pytest.param(write_checkpoint(lambda p, s, good: torch.save({"model": np.ones(3)}, p)), CheckpointError,
                 ("not a pyro_vae checkpoint", "safe loader"), id="numpy-inside"),
    pytest.param(write_checkpoint(lambda p, s, good: save_checkpoint(p, {"epoch": 1})), CheckpointError,
                 ("lacks",), id="missing-keys"),
    pytest.param(write_checkpoint(wrong_shapes), CheckpointError, ("does not fit the model",), id="wrong-weight-shapes"),
    pytest.param(write_checkpoint(lambda p, s, good: save_checkpoint(p, {**s, "config": {"model": {"latent_dim": 0}}})),
                 ConfigError, ("model.latent_dim",), id="invalid-config-inside"),
]


@pytest.mark.parametrize("write, error, words", CHECKPOINT_CASES)
def test_bad_checkpoint(tmp_path, write, error, words):
    write(tmp_path / "checkpoint.pt")
    with pytest.raises(error) as err:
        load_model(tmp_path, which="last")
    assert_clear(err.value, *words)
    if error is CheckpointError:
        assert "checkpoint.pt" in str(err.value)


def test_resume_from_an_empty_checkpoint_is_one_clear_line(tmp_path):
    from pyro_vae.jobs.train import fit

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        fit(None, resume=tmp_path, progress=False)
    assert_clear(err.value, "checkpoint.pt", "corrupt or truncated")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "nothing-here.pt")
    assert_clear(err.value, "No checkpoint", "nothing-here.pt")


def test_unreadable_best_falls_back_to_the_latest_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.pt", tiny_state())
    (tmp_path / "best.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="best.pt.*Using .*checkpoint.pt"):
        vae, _ = load_model(tmp_path)  # which="best"
    assert vae.latent_dim == 2
    with pytest.raises(CheckpointError) as err:  # asked for by name, best.pt has no fallback
        load_model(tmp_path / "best.pt")
    assert_clear(err.value, "best.pt", "another checkpoint (checkpoint.pt)")


# --------------------------------------------------------------------------- API calls


def vae(likelihood="bernoulli", **kwargs):
    return VAE((8, 8), latent_dim=2, likelihood=likelihood, hidden=(8,), levels=17, **kwargs)


GREY = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(0))
BINARY = torch.bernoulli(GREY)

API_CASES = [
    pytest.param(lambda: VAE((0, 8)), ValueError, ("event_shape", "(0, 8)"), id="vae-zero-dim"),
    pytest.param(lambda: VAE((8, -1)), ValueError, ("event_shape",), id="vae-negative-dim"),
    pytest.param(lambda: VAE(()), ValueError, ("event_shape",), id="vae-empty-shape"),
    pytest.param(lambda: VAE(64), TypeError, ("event_shape", "(784,)"), id="vae-int-shape"),
    pytest.param(lambda: VAE((8, 8), latent_dim=0), ValueError, ("latent_dim",), id="vae-latent-0"),
    pytest.param(lambda: VAE((8, 8), latent_dim=2.5), ValueError, ("latent_dim",), id="vae-latent-float"),
    pytest.param(lambda: VAE((8, 8), latent_dim=True), ValueError, ("latent_dim",), id="vae-latent-bool"),
    pytest.param(lambda: VAE((8, 8), hidden=[0]), ValueError, ("hidden",), id="vae-hidden-0"),
    pytest.param(lambda: VAE((8, 8), hidden=16), ValueError, ("hidden", "(256,)"), id="vae-hidden-int"),
    pytest.param(lambda: VAE((8, 8), levels=1), ValueError, ("levels",), id="vae-levels-1"),
    pytest.param(lambda: VAE((8, 8), likelihood="categorical", levels=10**7), ValueError, ("levels", "65536"),
                 id="vae-levels-1e7"),
    pytest.param(lambda: VAE((8, 8), prior="vampire"), ValueError, ("vampire",), id="vae-unknown-prior"),
    pytest.param(lambda: VAE((8, 8), likelihood="bernouli"), ValueError, ("bernouli",), id="vae-unknown-likelihood"),
    pytest.param(lambda: VAE((8, 8), net="rnn"), ValueError, ("rnn",), id="vae-unknown-net"),
    pytest.param(lambda: VAE((8, 8), activation="swishy"), ValueError, ("swishy",), id="vae-unknown-activation"),
    pytest.param(lambda: vae().model(None, 0), ValueError, ("num_samples", ">= 1"), id="model-zero-samples"),
    pytest.param(lambda: vae().model(None, -3), ValueError, ("num_samples",), id="model-negative-samples"),
    pytest.param(lambda: vae().model(None, 2.5), TypeError, ("num_samples",), id="model-float-samples"),
    pytest.param(lambda: vae().sample(0), ValueError, ("n must be >= 1",), id="sample-zero"),
    pytest.param(lambda: ELBO().training_loss(vae(), GREY), ValueError, ("binary data", "binarize"), id="fused-elbo-bernoulli-grey"),
    pytest.param(lambda: IWAE(num_particles=3).training_loss(vae(), GREY), ValueError, ("binary data",), id="fused-iwae-bernoulli-grey"),
    pytest.param(lambda: vae().elbo_terms(GREY), ValueError, ("binary data",), id="elbo-terms-bernoulli-grey"),
    pytest.param(lambda: ELBO().training_loss(vae("categorical"), GREY * 40), ValueError, ("support",), id="fused-categorical-out-of-range"),
    pytest.param(lambda: ELBO().training_loss(vae(), BINARY.numpy()), TypeError, ("torch.Tensor", "numpy.ndarray", "torch.as_tensor"),
                 id="loss-numpy"),
    pytest.param(lambda: ELBO().training_loss(vae(), BINARY.long()), TypeError, ("torch.int64", "torch.float32"), id="loss-int64"),
    pytest.param(lambda: ELBO().training_loss(vae(), BINARY.double()), TypeError, ("torch.float64", "x.to(torch.float32)"),
                 id="loss-float64"),
    pytest.param(lambda: ELBO().training_loss(vae(), BINARY.reshape(5, 64)), ValueError, ("shape (5, 64)", "(N, 8, 8)"),
                 id="loss-flat-shape"),
    pytest.param(lambda: vae().guide(BINARY.numpy()), TypeError, ("numpy.ndarray",), id="guide-numpy"),
    pytest.param(lambda: vae().reconstruct(BINARY.reshape(5, 64)), ValueError, ("(N, 8, 8)",), id="reconstruct-flat"),
    pytest.param(lambda: vae().check_data(GREY), ValueError, ("binary data",), id="check-data-grey"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10**8), ValueError, ("num_samples=100000000", "GB", "num_samples <="),
                 id="evaluate-K-1e8-memory"),
    pytest.param(lambda: evaluate(vae(), BINARY.numpy(), num_samples=10), TypeError, ("numpy.ndarray", "torch.as_tensor"),
                 id="evaluate-numpy"),
    pytest.param(lambda: evaluate(vae(), BINARY.double(), num_samples=10), TypeError, ("torch.float64",), id="evaluate-float64"),
    pytest.param(lambda: evaluate(vae(), BINARY.long(), num_samples=10), TypeError, ("floating-point",), id="evaluate-int64"),
    pytest.param(lambda: evaluate(vae(), GREY, num_samples=10), ValueError, ("binary data",), id="evaluate-bernoulli-grey"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=0), ValueError, ("num_samples",), id="evaluate-K-0"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=2.5), TypeError, ("num_samples",), id="evaluate-K-float"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, k_list=10), TypeError, ("k_list",), id="evaluate-k-list-int"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, k_list=(0,)), ValueError, ("k_list",), id="evaluate-k-list-0"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, batch_size=0), ValueError, ("batch_size",), id="evaluate-batch-0"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, chunk_size=-1), ValueError, ("chunk_size",), id="evaluate-chunk-neg"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, levels=1), ValueError, ("levels",), id="evaluate-levels-1"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, seed="a"), TypeError, ("seed",), id="evaluate-seed-str"),
    pytest.param(lambda: evaluate(vae(), BINARY, num_samples=10, method="fast"), ValueError, ("method",), id="evaluate-method"),
    pytest.param(lambda: evaluate(vae(), BINARY[:0], num_samples=10), ValueError, ("at least one datapoint",), id="evaluate-empty"),
    pytest.param(lambda: evaluate(vae(), BINARY.reshape(5, 64), num_samples=10), ValueError, ("(N, 8, 8)",), id="evaluate-shape"),
    pytest.param(lambda: evaluate(object(), BINARY, num_samples=10), TypeError, ("model(x) and guide(x)",), id="evaluate-not-a-model"),
    pytest.param(lambda: DataTransform(levels=1), ValueError, ("levels",), id="transform-levels-1"),
    pytest.param(lambda: DataTransform(levels=256, binarize="yes"), ValueError, ("binarize",), id="transform-binarize"),
    pytest.param(lambda: DataTransform(levels=None, dequantize=True), ValueError, ("dequantize",), id="transform-dequantize-continuous"),
    pytest.param(lambda: Dataset("d", torch.zeros(4, 2), torch.zeros(2, 2), torch.zeros(2, 2), None, None, None, 10**7, (2,)),
                 ValueError, ("levels", "65536"), id="dataset-levels-1e7"),
    pytest.param(lambda: Dataset("d", torch.zeros(4, 2).double(), torch.zeros(2, 2), torch.zeros(2, 2), None, None, None, None, (2,)),
                 ValueError, ("float32",), id="dataset-float64"),
    pytest.param(lambda: load_dataset("digitz"), ValueError, ("digitz",), id="unknown-dataset"),
    pytest.param(lambda: load_dataset("data.csv"), ValueError, (".npy",), id="unsupported-extension"),
]


@pytest.mark.parametrize("call, error, words", API_CASES)
def test_bad_api_call(call, error, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as err:
            call()
    assert_clear(err.value, *words)


# --------------------------------------------------------------------------- configs


CONFIG_CASES = [
    pytest.param({"train": {"lrr": 1e-3}}, "train.lrr", id="unknown-key"),
    pytest.param({"model": {"latent_dim": 0}}, "model.latent_dim", id="latent-0"),
    pytest.param({"train": {"lr": -1.0}}, "train.lr", id="lr-negative"),
    pytest.param({"train": {"epochs": 0}}, "train.epochs", id="epochs-0"),
    pytest.param({"train": {"batch_size": "big"}}, "train.batch_size", id="batch-size-str"),
    pytest.param({"train": {"objective": "elbow"}}, "train.objective", id="objective-typo"),
    pytest.param({"train": {"lr_schedule": "linear"}}, "train.lr_schedule", id="schedule-unknown"),
    pytest.param({"train": {"objective": "iwae", "num_particles": 1}}, "num_particles", id="iwae-one-particle"),
    pytest.param({"model": {"likelihood": "bernouli"}}, "model.likelihood", id="likelihood-typo"),
    pytest.param({"model": {"prior": {"k": 3}}}, "model.prior", id="prior-mapping-without-name"),
    pytest.param({"model": {"prior": "mog", "prior_kwargs": {"kk": 3}}}, "model.prior_kwargs", id="prior-unknown-setting"),
    pytest.param({"data": {"val_fraction": 1.5}}, "val_fraction", id="val-fraction-1.5"),
    pytest.param({"data": {"binarize": "yes"}}, "data.binarize", id="binarize-unknown"),
    pytest.param({"model": {"net": {"hidden": "16"}}}, "model.net.hidden", id="hidden-str"),
    pytest.param({"train": {"adam_eps": 0.0}}, "train.adam_eps", id="adam-eps-0"),
    pytest.param({"train": {"grad_clip": -1.0}}, "train.grad_clip", id="grad-clip-negative"),
    pytest.param({"train": {"patience": 0}}, "train.patience", id="patience-0"),
    pytest.param({"model": {"net": {"hidden": [0]}}}, "model.net.hidden[0]", id="hidden-layer-0"),
    pytest.param({"train": {"metrics_max_points": -5}}, "train.metrics_max_points", id="metrics-cap-negative"),
    pytest.param({"train": {"lr": float("inf")}}, "train.lr", id="lr-inf"),
    pytest.param({"train": {"beta": float("nan")}}, "train.beta", id="beta-nan"),
    pytest.param({"train": {"warmup_epochs": -1.0}}, "train.warmup_epochs", id="warmup-negative"),
    pytest.param({"model": {"prior": {"name": "mog", "k": "ten"}}}, "model.prior_kwargs.k", id="part-setting-str-for-int"),
    pytest.param([1, 2], "config", id="not-a-mapping"),
]


YAML_CASES = [
    pytest.param("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                 "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
                 "aliases", id="yaml-alias-bomb"),
    pytest.param("train:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'", id="yaml-duplicate-key"),
    pytest.param("train: [unclosed\n", "not valid YAML", id="yaml-syntax"),
    pytest.param("\udcff", "not valid YAML", id="yaml-not-text"),
]


@pytest.mark.parametrize("text, words", YAML_CASES)
def test_bad_yaml_file(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as err:
        load(path)
    assert_clear(err.value, words, "bad.yaml")


@pytest.mark.parametrize("raw, field", CONFIG_CASES)
def test_bad_config(raw, field):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert_clear(err.value, field)


# Part settings whose ranges only the part knows: the config builds the part to check them.
PART_RANGE_CASES = [
    pytest.param({"model": {"prior": {"name": "mog", "k": 0}}}, "k", id="mog-k-0"),
    pytest.param({"model": {"likelihood": {"name": "gaussian", "scale": -1.0}}}, "scale", id="gaussian-scale-negative"),
    pytest.param({"train": {"strategy": "nope"}}, "train.strategy", id="strategy-unknown"),
    pytest.param({"model": {"prior": {"name": "studentt", "scale": 0.0}}}, "scale", id="studentt-scale-0"),
    pytest.param({"model": {"prior": {"name": "flow", "num_layers": 0}}}, "num_layers", id="flow-no-layers"),
    pytest.param({"model": {"likelihood": {"name": "categorical", "levels": 1}}}, "levels", id="categorical-1-level"),
    pytest.param({"model": {"prior": "normal", "prior_kwargs": {"k": 3}}}, "has no settings", id="normal-takes-none"),
]


@pytest.mark.parametrize("raw, field", PART_RANGE_CASES)
def test_bad_part_settings_fail_in_the_config(raw, field):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert_clear(err.value, field)


# --------------------------------------------------------------------------- the command line


def cosine_run(tmp: Path) -> Path:
    cfg = from_dict({"train": {"epochs": 2, "lr_schedule": "cosine"}})
    save_checkpoint(tmp / "run" / "checkpoint.pt", {"config": asdict(cfg), "model": {}, "optimizer": {}, "epoch": 2,
                                                     "rng": {}, "history": [], "global_step": 0})
    return tmp / "run"


def npy_file(tmp: Path, array) -> str:
    np.save(tmp / "bad.npy", array)
    return str(tmp / "bad.npy")


def empty_checkpoint(tmp: Path) -> str:
    (tmp / "run").mkdir()
    (tmp / "run" / "checkpoint.pt").write_bytes(b"")
    return str(tmp / "run")


CLI_CASES = [
    pytest.param(lambda t: ["train", "--dataset", npy_file(t, ints_with(10**7)), "--out", str(t / "o")], "65536",
                 id="train-int-1e7-file"),
    pytest.param(lambda t: ["train", "--dataset", npy_file(t, floats_with(1e300)), "--out", str(t / "o")], "float32 range",
                 id="train-float64-overflow-file"),
    pytest.param(lambda t: ["train", "--lr", "-1", "--out", str(t / "o")], "train.lr", id="train-negative-lr"),
    pytest.param(lambda t: ["train", "--epochs", "0", "--out", str(t / "o")], "train.epochs", id="train-zero-epochs"),
    pytest.param(lambda t: ["train", "--resume", str(cosine_run(t)), "--epochs", "4"], "'cosine' was planned for 2 epochs",
                 id="train-extend-cosine"),
    pytest.param(lambda t: ["train", "--resume", empty_checkpoint(t)], "corrupt or truncated", id="train-resume-empty-checkpoint"),
    pytest.param(lambda t: ["evaluate", empty_checkpoint(t)], "corrupt or truncated", id="evaluate-empty-checkpoint"),
    pytest.param(lambda t: ["evaluate", str(t / "missing")], "No checkpoint", id="evaluate-missing-run"),
    pytest.param(lambda t: ["sample", empty_checkpoint(t)], "corrupt or truncated", id="sample-empty-checkpoint"),
    pytest.param(lambda t: ["train", "--lr", "1000", "--epochs", "2", "--latent-dim", "2", "--hidden", "16", "--no-progress",
                            "--out", str(t / "o")], "diverged", id="train-lr-1000-diverges"),
    pytest.param(lambda t: ["train", "--set", "train.grad_clip=-1", "--out", str(t / "o")], "train.grad_clip",
                 id="train-negative-grad-clip"),
    pytest.param(lambda t: ["train", "--prior", "mog", "--prior-arg", "k=ten", "--out", str(t / "o")], "expects int",
                 id="train-prior-arg-wrong-type"),
    pytest.param(lambda t: ["evaluate", str(t / "missing"), "--bdmc", "-1"], "bdmc", id="evaluate-negative-bdmc"),
]


@pytest.mark.parametrize("argv, expected", CLI_CASES)
def test_bad_command_line(tmp_path, capsys, monkeypatch, argv, expected):
    args = argv(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pyro-vae {args[0]}: error: ") and "\n" not in err and expected in err, err
    assert "Traceback" not in err and "weights_only=False" not in err
