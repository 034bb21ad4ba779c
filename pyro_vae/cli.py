"""The ``pyro-vae`` command line.

Commands::

    pyro-vae train [--config FILE] [--dataset NAME] [--prior NAME] [--likelihood NAME]
                   [--latent-dim N] [--epochs N] [--batch-size N] [--seed N] [--out DIR]
                   [--resume RUN_DIR] [--devices N] ...
    pyro-vae evaluate RUN_DIR [--split test] [--samples K] [--k-list 1,10,100,1000] [--method is|ais]
                   [--points N] [--batch-size N] [--seed N] [--which best|last] [--out DIR] [--no-progress]
    pyro-vae compare RUN_DIR [--baselines ppca,fa,gmm,mob] [--components K] [--points N] [--batch-size N]
                   [--seed N] [--which best|last] [--out DIR] [--no-progress]
    pyro-vae sample RUN_DIR [--num N] [--out FILE]
    pyro-vae trust RUN_DIR
    pyro-vae list

``--trust-code`` on ``train --resume``, ``evaluate``, ``compare`` and ``sample`` imports the
code a received run names without ``pyro-vae trust`` first (see :mod:`pyro_vae.runs.trust`).

``pyro-vae train`` with no arguments trains the embedded default (scikit-learn's
digits, offline) and prints the final validation ELBO.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

__all__ = ["main", "build_parser"]


def _quiet_warnings() -> None:
    # Third-party notices (arviz's refactor banner, Fabric's tips) drown the summary.
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default; a train flag's default is the config's (it overrides the config only when given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None:  # a train flag: unset means "as the config says"
            return text if "default" in text or not action.option_strings else text + " (default: from the config)"
        if action.default == [] or action.default is False:  # repeatable / switch flags: nothing to show
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders as Pyro models.",
                                     formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE (default: digits, offline)", formatter_class=_Help,
                       description="Train a VAE. Flags override the --config file; with neither, the embedded "
                                   "default trains on scikit-learn's digits, offline.")
    t.add_argument("--config", help="YAML config file; the flags below override it")
    t.add_argument("--dataset", help="digits, mnist, fashion_mnist, kmnist, mnist10k, or a .npy/.npz/.pt path "
                                     "(config default: digits)")
    t.add_argument("--data-root", help="folder with (or for) torchvision dataset files")
    t.add_argument("--binarize", help="none, dynamic, static or threshold (config default: none)")
    t.add_argument("--prior", help="registered prior (see `pyro-vae list`) or import path package.module:Name "
                                   "(config default: normal)")
    t.add_argument("--prior-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the prior, e.g. --prior mog --prior-arg k=10 (repeatable)")
    t.add_argument("--likelihood", help="registered likelihood or import path; auto picks bernoulli for binarized data, "
                                        "categorical for levels, gaussian_learned for continuous values (config default: auto)")
    t.add_argument("--likelihood-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the likelihood, e.g. --likelihood gaussian --likelihood-arg scale=0.05")
    t.add_argument("--latent-dim", type=int, help="size of z (config default: 4)")
    t.add_argument("--net", help="mlp or conv (config default: mlp)")
    t.add_argument("--hidden", help="comma-separated hidden sizes, e.g. 200,200 (config default: the net's own)")
    t.add_argument("--objective", help="elbo, meanfield, iwae, aae, gan or ali (config default: elbo)")
    t.add_argument("--particles", type=int, help="particles per datapoint, K for iwae (config default: 1)")
    t.add_argument("--beta", type=float, help="weight of the KL term (config default: 1.0)")
    t.add_argument("--epochs", type=int, help="epochs; with --resume, extends the run (config default: 40)")
    t.add_argument("--batch-size", type=int, help="minibatch size per process (config default: 64)")
    t.add_argument("--lr", type=float, help="Adam's learning rate (config default: 0.003)")
    t.add_argument("--seed", type=int, help="training seed (config default: 0)")
    t.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", dest="set_values",
                   help="any config value, e.g. --set train.lr_schedule=burda --set model.prior_kwargs.k=10 (repeatable)")
    t.add_argument("--out", help="run directory (config default: runs/default)")
    t.add_argument("--resume", help="continue the run in this directory")
    t.add_argument("--devices", type=int, help="devices (processes) for DDP (config default: 1)")
    t.add_argument("--accelerator", help="cpu, gpu or auto (config default: cpu)")
    t.add_argument("--no-progress", action="store_true", help="hide progress (a bar on a terminal, a line per epoch into a log)")
    t.add_argument("--trust-code", action="store_true", help="import the code a received run resumed with --resume names (its import paths) without `pyro-vae trust` first")

    # The estimators' defaults, from their one home (a light module: no torch).
    from pyro_vae.estimators.settings import BATCH_SIZE, IS_SAMPLES, K_LIST, Settings

    e = sub.add_parser("evaluate", help="log-likelihood by importance sampling or AIS, bounds and diagnostics",
                       formatter_class=_Help)
    e.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    e.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to score")
    e.add_argument("--samples", type=int, default=IS_SAMPLES, help="importance samples K per datapoint")
    e.add_argument("--k-list", default=",".join(map(str, K_LIST)), help="IWAE bounds to report")
    e.add_argument("--method", default="is", choices=("is", "ais"),
                   help="is: importance sampling only; ais: also annealed importance sampling with HMC")
    e.add_argument("--steps", type=int, default=Settings.steps,
                   help="AIS: intermediate distributions T (100: BDMC gap 0.09 nats on MNIST, ~3 min for 1000 points)")
    e.add_argument("--chains", type=int, default=Settings.chains, help="AIS: chains per point")
    e.add_argument("--leapfrog", type=int, default=Settings.leapfrog, help="AIS: leapfrog steps per HMC transition")
    e.add_argument("--bdmc", type=int, default=0, metavar="N",
                   help="BDMC on N points simulated from the model, at T/100, T/10 and T (0: off)")
    e.add_argument("--data-root", help="where the run's data lives now, if it moved since training")
    e.add_argument("--points", type=int, default=None, help="score only the first N points of the split (default: all)")
    e.add_argument("--batch-size", type=int, default=None,
                   help=f"points per batch (default: {BATCH_SIZE}, fewer for IS when K is large)")
    e.add_argument("--seed", type=int, default=0, help="seed of the draws")
    e.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint: best validation ELBO or latest")
    e.add_argument("--out", help="output folder (default: the run directory)")
    e.add_argument("--devices", type=int, default=1, help="processes (devices) that share the points, by DDP")
    e.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    e.add_argument("--no-progress", action="store_true", help="hide progress (a bar on a terminal, plain lines into a log)")
    e.add_argument("--trust-code", action="store_true",
                   help="import the code a received run names (its import paths) without `pyro-vae trust` first")

    c = sub.add_parser("compare", help="exact EM baselines against the VAE, same units", formatter_class=_Help)
    c.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    c.add_argument("--baselines", default="ppca,fa,gmm,mob", help="comma-separated: ppca, fa, gmm, gmm_full, mob")
    c.add_argument("--components", type=int, default=None,
                   help="components of every baseline (default: the latent size for PPCA/FA, 10 for mixtures)")
    c.add_argument("--samples", type=int, default=IS_SAMPLES, help="importance samples K for the VAE")
    c.add_argument("--data-root", help="where the run's data lives now, if it moved since training")
    c.add_argument("--split", default="test", choices=("train", "val", "test"), help="the split to score")
    c.add_argument("--points", type=int, default=None, help="score only the first N points of the split (default: all)")
    c.add_argument("--batch-size", type=int, default=None, help="points per batch of the VAE's importance sampling (default: 100)")
    c.add_argument("--seed", type=int, default=0, help="seed of the importance draws and the baselines' initialization")
    c.add_argument("--which", default="best", choices=("best", "last"), help="checkpoint: best validation ELBO or latest")
    c.add_argument("--out", help="output folder (default: the run directory)")
    c.add_argument("--no-progress", action="store_true", help="hide progress (a bar on a terminal, plain lines into a log)")
    c.add_argument("--trust-code", action="store_true", help="import the code a received run names (its import paths) without `pyro-vae trust` first")

    s = sub.add_parser("sample", help="draw samples from a trained model into a PNG", formatter_class=_Help)
    s.add_argument("run_dir", help="a run directory written by `pyro-vae train`")
    s.add_argument("--num", type=int, default=64, help="number of samples")
    s.add_argument("--out", help="PNG path (default: RUN_DIR/sample_NUM_seedSEED.png; training's samples.png is kept)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draws")
    s.add_argument("--trust-code", action="store_true", help="import the code a received run names (its import paths) without `pyro-vae trust` first")

    r = sub.add_parser("trust", help="trust a received run: its recorded import paths may be imported",
                       formatter_class=_Help,
                       description="Sign a run's checkpoints with your local key (see pyro_vae.runs.trust), so that "
                                   "evaluate, sample, compare, resume and load_model import the code its config names. "
                                   "Only trust runs from people whose code you would run.")
    r.add_argument("run_dir", help="a run directory (or a .pt checkpoint)")

    sub.add_parser("list", help="registered priors, likelihoods and datasets")
    return parser


# `pyro-vae train` flags that set one config key (argparse dest -> section, key). The help strings quote
# the config defaults by hand, so `--help` need not import the package; tests/test_cli.py checks them.
TRAIN_FLAGS = {
    "dataset": ("data", "name"), "data_root": ("data", "root"), "binarize": ("data", "binarize"),
    "prior": ("model", "prior"), "likelihood": ("model", "likelihood"), "latent_dim": ("model", "latent_dim"),
    "objective": ("train", "objective"), "particles": ("train", "num_particles"), "beta": ("train", "beta"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "seed": ("train", "seed"), "devices": ("train", "devices"), "accelerator": ("train", "accelerator"),
}


def _train_config(args: argparse.Namespace):
    from pyro_vae.core.errors import ConfigError
    from pyro_vae.runs import config as config_lib

    raw = config_lib.to_dict(config_lib.load(args.config)) if args.config else {}
    raw.setdefault("data", {})
    raw.setdefault("model", {})
    raw.setdefault("train", {})
    named = raw["model"].get("name", config_lib.STOCK_MODEL) != config_lib.STOCK_MODEL
    stock_flags = [f"--{dest.replace('_', '-')}" for dest in ("prior", "likelihood", "latent_dim", "net", "hidden",
                                                              "prior_arg", "likelihood_arg") if getattr(args, dest)]
    if named and stock_flags:
        raise ConfigError(f"{', '.join(stock_flags)} set parts of the stock VAE, but model.name is "
                          f"{raw['model']['name']!r}; set its settings with --set model.KEY=VALUE instead.")
    if not named:
        raw["model"].setdefault("net", {})
    for dest, (section, key) in TRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            if key in ("prior", "likelihood") and raw["model"].get(key) != value:
                raw["model"][f"{key}_kwargs"] = {}  # settings of the replaced strategy no longer apply
            raw[section][key] = value
    for key, pairs in (("prior_kwargs", args.prior_arg), ("likelihood_kwargs", args.likelihood_arg)):
        for pair in pairs:
            name, value = _key_value(pair, f"--{key.split('_')[0]}-arg")
            raw["model"].setdefault(key, {})[name] = value
    for pair in args.set_values:
        path, value = _key_value(pair, "--set")
        _set_path(raw, path, value)
    if args.net:
        raw["model"]["net"]["kind"] = args.net
    if args.hidden:
        try:
            raw["model"]["net"]["hidden"] = [int(h) for h in args.hidden.split(",")]
        except ValueError:
            raise ConfigError(f"--hidden {args.hidden!r}: expected comma-separated layer sizes such as 200,200 "
                              "(or an empty string for a linear net).") from None
    if args.out:
        raw["out"] = args.out
    return config_lib.from_dict(raw)


def _resume_changes(args: argparse.Namespace) -> dict | None:
    """What ``train --resume`` was asked to change: only the flags given (a resume keeps the rest of its config)."""
    from pyro_vae.core.errors import ConfigError

    if args.config:
        raise ConfigError("--config starts a run; --resume continues the one in its directory with its own config. "
                          "Change what a resume may change with flags (--epochs, --lr, ...) or --set.")
    raw: dict = {}
    for dest, (section, key) in TRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            raw.setdefault(section, {})[key] = value
    for flag, given in (("--prior-arg", args.prior_arg), ("--likelihood-arg", args.likelihood_arg),
                        ("--net", args.net), ("--hidden", args.hidden), ("--out", args.out)):
        if given:
            raise ConfigError(f"{flag} cannot change when resuming: a resume continues the run in {args.resume!r} "
                              "(its model and directory); start a new run instead.")
    for pair in args.set_values:
        path, value = _key_value(pair, "--set")
        _set_path(raw, path, value)
    return raw or None


def _key_value(pair: str, flag: str) -> tuple[str, object]:
    """``"k=10"`` -> ``("k", 10)``: the value is read as YAML, so numbers, booleans and lists work."""
    import yaml

    from pyro_vae.core.errors import ConfigError

    key, sep, text = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} k=10.")
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{flag} {pair!r}: the value is not valid YAML; quote strings with spaces.") from None


def _set_path(raw: dict, path: str, value: object) -> None:
    from pyro_vae.core.errors import ConfigError

    keys = path.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {path}: {key!r} is a value, not a section.")
        node = child
    node[keys[-1]] = value


def _cmd_train(args: argparse.Namespace) -> int:
    from pyro_vae.jobs.train import fit

    if args.resume:
        result = fit(_resume_changes(args), resume=args.resume, progress=not args.no_progress, trust_code=args.trust_code)
    else:
        result = fit(_train_config(args), progress=not args.no_progress)
    import lightning_fabric.utilities.rank_zero as rz

    if rz.rank_zero_only.rank == 0:
        last = result.history[-1] if result.history else None
        if result.epochs_trained == 0:
            done = len(result.history)
            print(f"Nothing to train: {result.run_dir} has finished its {done} epochs and nothing was changed; "
                  f"continue it with --resume {result.run_dir} --epochs {done + 10} (any number above {done}).")
        elif last is None:
            print(f"Nothing to do: the run in {result.run_dir} already finished {result.config.train.epochs} epochs.")
        elif "train_discriminator_loss" in last:  # aae/gan/ali: their losses are not bounds on log p(x)
            objective = result.config.train.objective
            encoder = "untrained encoder" if objective == "gan" else "encoder"
            print(
                f"epoch {last['epoch']} ({objective}): generator loss {last['train_loss']:.3f}, discriminator loss "
                f"{last['train_discriminator_loss']:.3f} per point; validation ELBO through its {encoder} "
                f"{last['val_elbo']:.3f} nats/point (a loose bound)"
            )
            print(f"its log-likelihood: pyro-vae evaluate {result.run_dir} --method ais  (AIS from the prior)")
        else:
            print(
                f"epoch {last['epoch']}: validation ELBO {last['val_elbo']:.3f} nats/point "
                f"(reconstruction {last['val_reconstruction']:.3f}, KL {last['val_kl']:.3f}); "
                f"train ELBO {last['train_elbo']:.3f}"
            )
            if result.ddp:
                print(f"DDP: {result.ddp['world_size']} ranks, max parameter difference {result.ddp['max_param_diff']:.3g}")
            print(f"run directory: {result.run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pyro_vae.jobs.evaluate import evaluate_run

    k_list = tuple(int(k) for k in args.k_list.split(",") if k)
    fabric = None
    if args.devices > 1:  # each process scores its share of the points; rank 0 writes the report
        from pyro_vae.runs.build import make_fabric
        from pyro_vae.runs.config import TrainConfig

        fabric = make_fabric(TrainConfig(devices=args.devices, accelerator=args.accelerator))
        fabric.launch()
    evaluate_run(args.run_dir, split=args.split, num_samples=args.samples, k_list=k_list, method=args.method,
                 steps=args.steps, chains=args.chains, leapfrog=args.leapfrog, bdmc_points=args.bdmc,
                 data_root=args.data_root, num_points=args.points, batch_size=args.batch_size, seed=args.seed,
                 which=args.which, out=args.out, fabric=fabric, verbose=fabric is None or fabric.is_global_zero,
                 progress=False if args.no_progress else None, trust_code=args.trust_code)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pyro_vae.jobs.compare import compare_run

    compare_run(args.run_dir, baselines=[b for b in args.baselines.split(",") if b], components=args.components,
                split=args.split, num_samples=args.samples, seed=args.seed, data_root=args.data_root, which=args.which,
                num_points=args.points, batch_size=args.batch_size, out=args.out,
                progress=False if args.no_progress else None, trust_code=args.trust_code)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from pyro_vae.core.errors import CheckpointError, ConfigError
    from pyro_vae.plots.figures import sample_grid
    from pyro_vae.runs.rundir import load_model, load_run, read_checkpoint

    if args.num < 1:
        raise ConfigError(f"--num must be a whole number >= 1 (samples to draw), got {args.num}.")

    try:
        vae, _ = load_model(args.run_dir, trust_code=args.trust_code)
        event_shape = read_checkpoint(args.run_dir, trust_code=args.trust_code)[1]["data_shape"]["event_shape"]
    except CheckpointError:  # a checkpoint from before data shapes were recorded: rebuild through the data
        vae, _, dataset, _ = load_run(args.run_dir, trust_code=args.trust_code)
        event_shape = dataset.event_shape
    # Its own file: training's samples.png stays as the run wrote it.
    out = Path(args.out) if args.out else Path(args.run_dir) / f"sample_{args.num}_seed{args.seed}.png"
    plt.close(sample_grid(vae, n=args.num, path=out, seed=args.seed, event_shape=event_shape))
    print(f"wrote {args.num} samples (means and draws) to {out}")
    return 0


def _plain(text: str) -> str:
    """Docstring markup to plain text: ``code`` -> code, :class:`~a.b.C` -> C."""
    import re

    text = re.sub(r":[a-z]+:`~?([^`<]*?)(?: <[^>]*>)?`", lambda m: m.group(1).split(".")[-1], text)
    return text.replace("``", "")


def _cmd_trust(args: argparse.Namespace) -> int:
    from pyro_vae.runs.rundir import trust_run

    paths = trust_run(args.run_dir)
    what = f"its import paths {', '.join(paths)} will be imported" if paths else "it names no code to import"
    print(f"trusted {args.run_dir}: {what} without --trust-code.")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    import inspect

    from pyro_vae.data.datasets import DATASETS, FILE_EXTENSIONS
    from pyro_vae.models.parts import KINDS, settings_of

    def settings(fn) -> str:
        params = [f"{p.name}={p.default!r}" for p in settings_of(fn).values() if p.default is not inspect.Parameter.empty]
        return f"({', '.join(params)})" if params else ""

    def first_line(fn) -> str:
        doc = inspect.getdoc(fn)
        return _plain(doc.splitlines()[0]) if doc else ""

    for kind, registry in KINDS.items():
        if registry or kind in ("prior", "likelihood"):
            print(f"{kind}s:" if kind != "vae" else "VAE classes:")
            for name, fn in registry.items():
                print(f"  {name + settings(fn):<48} {first_line(fn)}")
    print("datasets:")
    for name in DATASETS:
        print(f"  {name}")
    print(f"  <path ending in {', '.join(FILE_EXTENSIONS)}>")
    print("Your own parts: a config (or --prior/--likelihood) may name any 'package.module:Name' instead.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` console script."""
    _quiet_warnings()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from pyro_vae.core.errors import PyroVAEError

    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "compare": _cmd_compare, "sample": _cmd_sample,
                "trust": _cmd_trust, "list": _cmd_list}
    try:
        return commands[args.command](args)
    except (PyroVAEError, FileNotFoundError, ValueError) as exc:
        print(f"pyro-vae {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
