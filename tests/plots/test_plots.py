"""Run pictures return a Figure, write a real PNG, and draw what they claim: titles naming the run,
labelled rows, one axis per quantity and per comparable representation, per-feature views of tabular data.

The models are untrained (random nets): every property checked here holds for any weights.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pyro_vae.plots import figures as plots  # noqa: E402
from pyro_vae.estimators.importance import evaluate  # noqa: E402
from pyro_vae.models.vae import VAE  # noqa: E402
from plot_helpers import close_figures, images, png_ok, vae  # noqa: F401  (fixtures)


def test_sample_reconstruction_and_evaluation_plots(vae, images, tmp_path):
    history = [{"epoch": e, **{f"{s}_{k}": -float(e) for s in ("train", "val") for k in ("elbo", "reconstruction", "kl")}}
               for e in (1, 2, 3)]
    ev = evaluate(vae, images[:10], num_samples=20, k_list=(1, 5, 20), seed=0)
    for name, fig in {
        "samples": plots.sample_grid(vae, n=16, path=tmp_path / "samples.png"),
        "recon": plots.reconstruction_grid(vae, images[:16], path=tmp_path / "recon.png"),
        "curves": plots.training_curves(history, path=tmp_path / "curves.png"),
        "bound": plots.bound_vs_k(ev, path=tmp_path / "bound.png"),
        "khat": plots.khat_histogram(ev, path=tmp_path / "khat.png"),
        "kl": plots.kl_per_dim(ev, path=tmp_path / "kl.png"),
    }.items():
        assert isinstance(fig, Figure), name
    for png in tmp_path.glob("*.png"):
        png_ok(png)
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_every_run_picture_names_the_run_and_its_units(vae, images):
    history = [{"epoch": e, **{f"{s}_{k}": -float(e) for s in ("train", "val") for k in ("elbo", "reconstruction", "kl")}}
               for e in (1, 2)]
    ev = evaluate(vae, images[:10], num_samples=20, k_list=(1, 5, 20), seed=0)
    figures = {
        "samples": plots.sample_grid(vae, n=16, run="run-7"),
        "recon": plots.reconstruction_grid(vae, images[:8], run="run-7"),
        "curves": plots.training_curves(history, run="run-7"),
        "bound": plots.bound_vs_k(ev, run="run-7"),
        "khat": plots.khat_histogram(ev, run="run-7"),
        "kl": plots.kl_per_dim(ev, run="run-7"),
        "bdmc": plots.bdmc_sandwich([1, 10], [-5.0, -4.0], [-3.0, -3.5], run="run-7"),
    }
    for name, fig in figures.items():
        assert fig._suptitle is not None and fig._suptitle.get_text().startswith("run-7: "), name
    for ax in figures["curves"].axes:
        assert ax.get_ylabel() == "nats / point"
    assert "nats" in figures["bound"].axes[0].get_ylabel()


def test_reconstruction_rows_are_labelled_data_and_reconstruction(vae, images):
    fig = plots.reconstruction_grid(vae, images[:20])  # 20 points: 3 rows of data, each with its reconstruction row
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["data", "recon."] * 3
    assert "mean of p(x | z = E_q[z|x])" in fig.axes[0].get_title()


def test_kl_per_dim_has_two_labelled_panels_whose_counts_match_the_report(vae, images):
    ev = evaluate(vae, images, num_samples=20, k_list=(1, 20), seed=0)
    fig = plots.kl_per_dim(ev)
    kl_ax, var_ax = fig.axes
    dims = vae.latent_dim
    assert kl_ax.get_ylabel() == "nats"
    assert f"{int((ev.kl_per_dim > 0.01).sum())}/{dims} dimensions above 0.01 nats" in kl_ax.get_title()
    assert f"{ev.active_units}/{dims} active units" in var_ax.get_title()
    # Bars are the two quantities, each on its own axis.
    assert [p.get_height() for p in kl_ax.patches] == pytest.approx(ev.kl_per_dim.clamp_min(1e-6).tolist(), rel=1e-5)
    assert [p.get_height() for p in var_ax.patches] == pytest.approx(ev.unit_variance.clamp_min(1e-6).tolist(), rel=1e-5)


def test_tabular_samples_are_per_feature_histograms_against_the_data(tmp_path):
    torch.manual_seed(0)
    vae = VAE((5,), latent_dim=2, likelihood="gaussian", hidden=[8]).eval()
    data = torch.randn(300, 5) + 3.0
    fig = plots.sample_grid(vae, path=tmp_path / "s.png", data=data, run="tab")
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 5 and not any(ax.images for ax in shown)  # histograms, not 1 x 5 grey strips
    assert [ax.get_title() for ax in shown] == [f"feature {j}" for j in range(5)]
    labels = [t.get_text() for t in shown[0].get_legend().get_texts()]
    assert labels == ["model x ~ p(x)", "data"]
    png_ok(tmp_path / "s.png")
    recon = plots.reconstruction_grid(vae, data[:40])
    scatter = [ax for ax in recon.axes if ax.get_visible()][0]
    assert len(scatter.collections[0].get_offsets()) == 40  # one point per datapoint, against the diagonal


def test_comparison_chart_puts_only_comparable_representations_on_one_axis(tmp_path):
    def row(model, representation, bits):
        return {"model": model, "data": representation.split()[0], "representation": representation, "num_dims": 64,
                "log_likelihood": {"mean": -bits * 64 * 0.693, "se": 0.5, "bits_per_dim": bits}}

    rows = [row("VAE", "levels (17 levels)", 2.0), row("ppca", "dequantized (17 levels)", 3.7),
            row("mob", "binary", 0.43), row("gmm", "dequantized (17 levels)", 2.8), row("other", "dequantized (256 levels)", 1.0)]
    fig = plots.comparison_chart(rows, tmp_path / "c.png", run="r")
    quantized, binary, other = fig.axes
    assert quantized.get_title() == "data: levels or dequantized (17 levels)"  # a mass of L levels and its dequantization
    assert binary.get_title() == "data: binary" and other.get_title() == "data: levels or dequantized (256 levels)"

    def heights(ax):
        return {t.get_text().split("\n")[0]: y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}

    assert set(heights(quantized)) == {"VAE", "ppca", "gmm"} and set(heights(binary)) == {"mob"}
    assert heights(quantized)["VAE"] > heights(quantized)["ppca"] > heights(quantized)["gmm"]  # rows top-down, VAE first
    assert list(quantized.collections[-1].get_offsets()[:, 0]) == [2.0, 3.7, 2.8]  # drawn in bits/dim
    colours = quantized.collections[-1].get_facecolors()
    assert tuple(colours[0][:3]) != tuple(colours[1][:3])  # the VAE stands out
    assert "bits / dim" in quantized.get_xlabel()
    png_ok(tmp_path / "c.png")
