"""Figures of mnistlab.viz.{activations,compare,gallery,ambiguous} and the HTML report."""

from __future__ import annotations

import base64
import re

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from _inspect_models import planted_convnet, planted_dataset, planted_mlp
from mnistlab.inspect import (
    compare_classes,
    compute_activations,
    confusions,
    find_ambiguous,
    optimize_inputs,
    select_images,
)
from mnistlab.inspect.report import SECTIONS, build_report
from mnistlab.viz.activations import (
    Marks,
    cell_origin,
    dense_columns,
    mosaic,
    plot_activations,
    standardize_maps,
)
from mnistlab.viz.ambiguous import plot_ambiguous
from mnistlab.viz.compare import plot_contrast, plot_ranking
from mnistlab.viz.gallery import plot_confusion_gallery, plot_oip_gallery


@pytest.fixture(scope="module")
def net():
    return planted_convnet()


@pytest.fixture(scope="module")
def ds():
    return planted_dataset(12)


def _no_windows():
    import matplotlib.pyplot as plt

    assert matplotlib.get_backend().lower() == "agg"
    assert plt.get_fignums() == []  # figures are built without pyplot: nothing to close, nothing shown


def test_mosaic_puts_every_map_in_its_cell():
    maps = np.arange(10 * 3 * 4, dtype=np.float32).reshape(10, 3, 4)
    grid = mosaic(maps, ncols=4)
    assert grid.shape == (
        3 * 4 - 1,
        4 * 5 - 1,
    )  # 3 rows of 3-pixel maps, 4 columns of 4-pixel maps, 1-pixel gaps
    for k in range(10):
        r, c = cell_origin(k, 4, 3, 4)
        assert (r, c) == ((k // 4) * 4, (k % 4) * 5)
        np.testing.assert_array_equal(grid[r : r + 3, c : c + 4], maps[k])
    filled = sum(np.isfinite(grid[cell_origin(k, 4, 3, 4)]) for k in range(12))
    assert filled == 10  # cells 10 and 11 of the last row stay empty
    assert np.isnan(grid[3]).all() and np.isnan(grid[:, 4]).all()  # the gaps


def test_dense_nodes_form_a_grid_of_cells():
    nodes = np.arange(70, dtype=np.float32)
    grid = mosaic(nodes)
    assert dense_columns(70) == 10 and grid.shape == (7, 10)
    np.testing.assert_array_equal(grid.ravel(), nodes)
    grid = mosaic(np.arange(12.0), ncols=5)
    assert grid.shape == (3, 5) and np.isnan(grid[2, 2:]).all()


def test_standardize_maps_like_the_seed():
    maps = np.random.default_rng(0).normal(3, 2, (2, 5, 6, 6))
    maps[0, 1] = 7.0  # a constant map
    out = standardize_maps(maps, clip=None)
    np.testing.assert_allclose(out[1].mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out[1].std(axis=(1, 2)), 1, atol=1e-5)
    assert np.all(out[0, 1] == 0)
    assert np.abs(standardize_maps(maps, clip=1.5)).max() <= 1.5


def test_plot_activations_layout(net, ds):
    chosen = select_images(ds, "test", indices=[48, 108, 3])
    acts = compute_activations(net, chosen, ["conv1", "dense1"])
    fig = plot_activations(chosen.images, acts["conv1"], layer="conv1", titles=chosen.names())
    assert isinstance(fig, Figure)
    grids = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape != (28, 28)]
    inputs = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape == (28, 28)]
    assert len(grids) == 3 and len(inputs) == 3
    for k, ax in enumerate(grids):
        np.testing.assert_array_equal(
            np.ma.filled(ax.images[0].get_array(), np.nan), mosaic(acts["conv1"][k], 8)
        )
    # One colour scale for all images by default: brighter means more active, across images.
    assert len({ax.images[0].get_clim() for ax in grids}) == 1
    separate = plot_activations(chosen.images, acts["conv1"], shared_scale=False)
    assert (
        len(
            {
                ax.images[0].get_clim()
                for ax in separate.axes
                if ax.images and ax.images[0].get_array().shape != (28, 28)
            }
        )
        > 1
    )
    dense = plot_activations(
        chosen.images[:1], acts["dense1"][:1], layer="dense1", standardize=True, cmap="magma"
    )
    (grid,) = [ax for ax in dense.axes if ax.images and ax.images[0].get_array().shape != (28, 28)]
    assert grid.images[0].get_array().shape == (1, 6)
    assert grid.images[0].get_cmap().name.startswith("magma")
    _no_windows()


def test_marks_are_drawn_where_the_mask_is(net, ds):
    chosen = select_images(ds, "test", indices=[48])
    acts = compute_activations(net, chosen, ["conv1"])["conv1"]
    mask = np.zeros(acts.shape[1:], bool)
    mask[2, 5, 7] = True
    fig = plot_activations(chosen.images, acts, ncols=2, marks=[Marks([mask], ("red",))], colorbar=False)
    (grid,) = [ax for ax in fig.axes if ax.collections]
    (x, y), = grid.collections[0].get_offsets()
    r, c = cell_origin(2, 2, 26, 26)
    assert (x, y) == (c + 7, r + 5)


def test_comparison_figures(net, ds):
    comparison = compare_classes(net, ds, 4, 9, n=2)
    fig = plot_contrast(comparison, "conv1")
    assert isinstance(fig, Figure)
    marked = [ax for ax in fig.axes if ax.collections]
    assert len(marked) >= 2  # both A grids carry red/yellow circles
    assert "red" in fig._suptitle.get_text()
    assert isinstance(plot_contrast(comparison, "dense1", standardize=True), Figure)
    ranking = plot_ranking(comparison.table(8), a_name="4", b_name="9")
    assert len(ranking.axes[0].patches) == 8
    assert isinstance(plot_ranking([]), Figure)
    _no_windows()


def test_ambiguous_confusion_and_oip_figures(net, ds):
    result = find_ambiguous(net, ds, (4, 9), n=3)
    fig = plot_ambiguous(result, ds.class_names)
    assert len([ax for ax in fig.axes if ax.images]) == 3
    conf = confusions(net, ds)
    gallery = plot_confusion_gallery(conf, ds.test_images, top=3, per_pair=4)
    shown = sum(1 for ax in gallery.axes if ax.images)
    assert shown == sum(min(4, c) for _, _, c in conf.pairs(3))
    oip = optimize_inputs(net, "dense1", steps=5)
    fig = plot_oip_gallery(oip, ncols=4)
    (ax,) = fig.axes  # one tiled image, drawn once
    (shown,) = ax.images
    mosaic = np.ma.filled(shown.get_array(), np.nan)
    labels = [t.get_text() for t in ax.texts]
    assert [label.split(":")[0] for label in labels] == [str(u) for u in range(6)]
    for k, text in enumerate(ax.texts):  # each pattern sits right under its label, in pixel values
        x, y = text.get_position()
        top, left = int(round(y + 1.5)), int(round(x - 14))
        np.testing.assert_allclose(mosaic[top : top + 28, left : left + 28], oip.images[k])
    assert np.isnan(mosaic).any() and np.nanmax(mosaic) <= 255  # gaps show the background
    _no_windows()



def test_oip_gallery_greys_dead_units():
    from mnistlab.inspect.oip import OIPResult

    images = np.stack([np.full((28, 28), 200.0), np.full((28, 28), 100.0)]).astype(np.float32)
    start, final = np.array([0.1, 0.0]), np.array([2.0, 0.0])  # unit 9 never moved from zero: dead
    trace = np.stack([start, final])
    result = OIPResult("conv2", np.array([4, 9]), images, start, final, trace, unit_kind="map")
    (ax,) = plot_oip_gallery(result).axes
    assert [t.get_text() for t in ax.texts] == ["4: 2.00", "9: dead"]
    mosaic = np.ma.filled(ax.images[0].get_array(), np.nan)
    # drawn at 35% strength, as a 65%-transparent tile over the white background would look
    assert sorted(np.unique(mosaic[~np.isnan(mosaic)])) == [35.0, 200.0]
    _no_windows()

def _report(model, ds, **kwargs):
    manifest = {
        "format": 1, "kind": model.kind, "dataset": "mnist", "created": "now",
        "config": {"lr": 0.1, "epochs": 2}, "versions": {"numpy": np.__version__},
    }
    history = [
        {"epoch": 1, "loss": 1.0, "train_accuracy": 0.5},
        {"epoch": 2, "loss": 0.5, "train_accuracy": 0.7},
    ]
    return build_report(model, ds, manifest, history, oip_steps=5, **kwargs)


@pytest.mark.parametrize("make", [planted_convnet, planted_mlp], ids=["cnn", "mlp"])
def test_report_contains_every_section_and_is_self_contained(make, ds):
    text = _report(make(), ds)
    for key in SECTIONS:
        assert f'<section id="{key}">' in text
    assert text.count('<section id="') == len(SECTIONS)
    for section in ("summary", "training", "confusions", "compare", "ambiguous", "attribution", "oip"):
        body = text.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "could not be built" not in body, section
        if section != "summary":
            assert "data:image/png;base64," in body, section
    images = re.findall(r'src="([^"]+)"', text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text
    _no_windows()


def test_report_survives_a_section_that_cannot_be_built(ds):
    text = _report(planted_mlp(), ds, pair=(4, 12))
    assert "could not be built" in text.split('<section id="compare">')[1].split("</section>")[0]
    assert '<section id="oip">' in text
