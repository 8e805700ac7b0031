"""mnistlab.inspect on small NumPy models with planted units (tests/_inspect_models.py): no engine needed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from _inspect_models import CORNER, MIDDLE, numeric_gradient, planted_convnet, planted_dataset, planted_mlp
from mnistlab.errors import ConfigError
from mnistlab.inspect import (
    auc_scores,
    compare_classes,
    compute_activations,
    confusions,
    contrast_layer,
    find_ambiguous,
    image_set,
    multiscale_noise,
    optimize_inputs,
    rank_units,
    select_images,
    standardized_mean_difference,
)
from mnistlab.inspect.activations import (
    default_layers,
    last_conv_layer,
    last_hidden_dense_layer,
    layer_shapes,
)
from mnistlab.inspect.oip import parse_units, pen_strokes


@pytest.fixture(scope="module")
def net():
    return planted_convnet()


@pytest.fixture(scope="module")
def mlp():
    return planted_mlp()


@pytest.fixture(scope="module")
def ds():
    return planted_dataset(12)


# ----- the test models themselves -----

@pytest.mark.parametrize(
    "layer,units", [("conv1", [0, 1, 2]), ("pool1", [3, 0, 2]), ("dense1", [0, 1, 5]), ("output", [4, 9, 0])]
)
def test_fixture_convnet_gradient_is_exact(net, layer, units):
    x = np.random.default_rng(1).uniform(0, 1, (3, 28, 28))  # continuous values: no max-pool ties
    values, grads = net.input_gradient(x, layer, units)
    np.testing.assert_allclose(grads, numeric_gradient(net, x, layer, units), atol=1e-6)
    assert values.shape == (3,)


@pytest.mark.parametrize("layer,units", [("hidden1", [0, 1, 2]), ("output", [4, 9, 0])])
def test_fixture_mlp_gradient_is_exact(mlp, layer, units):
    x = np.random.default_rng(2).uniform(0, 1, (3, 28, 28))
    _, grads = mlp.input_gradient(x, layer, units)
    np.testing.assert_allclose(grads, numeric_gradient(mlp, x, layer, units), atol=1e-6)


# ----- activations -----

def _hand_forward(net, image):
    """A deliberately naive forward pass (loops), independent of the model's vectorized one."""
    x = image.astype(np.float64) / 255.0
    c = len(net.k)
    conv = np.zeros((c, 26, 26))
    for k in range(c):
        for i in range(26):
            for j in range(26):
                conv[k, i, j] = max(0.0, float(np.sum(x[i : i + 3, j : j + 3] * net.k[k])) + net.kb[k])
    pool = np.zeros((c, 13, 13))
    for k in range(c):
        for i in range(13):
            for j in range(13):
                pool[k, i, j] = conv[k, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max()
    flat = pool.ravel()
    dense = np.maximum(flat @ net.w1 + net.b1, 0)
    z = dense @ net.w2 + net.b2
    out = np.exp(z - z.max())
    return {"conv1": conv, "pool1": pool, "flatten": flat, "dense1": dense, "output": out / out.sum()}


def test_activations_equal_a_hand_written_forward_pass(net, ds):
    chosen = select_images(ds, "test", indices=[3, 48, 50, 117, 0])
    acts = compute_activations(net, chosen, None, batch_size=2)  # batches of 2: the seams are checked too
    assert set(acts) == set(net.layer_names())
    for k, image in enumerate(chosen.images):
        expected = _hand_forward(net, image)
        for name, value in expected.items():
            assert acts[name].dtype == np.float32
            np.testing.assert_allclose(acts[name][k], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_activations_of_arrays_and_single_image(mlp):
    image = np.zeros((28, 28), np.uint8)
    image[CORNER] = 255
    acts = compute_activations(mlp, image_set(image), "hidden1")
    expected = np.maximum((image.reshape(-1) / 255.0) @ mlp.w1 + mlp.b1, 0)
    np.testing.assert_allclose(acts["hidden1"][0], expected, rtol=1e-5, atol=1e-6)
    assert acts["hidden1"][0, 0] == pytest.approx(0.5)


def test_unknown_layer_lists_the_valid_ones(net, ds):
    with pytest.raises(ConfigError) as err:
        compute_activations(net, ds.test_images[:2], ["conv9"])
    message = str(err.value)
    assert "conv9" in message and all(name in message for name in net.layer_names())


def test_select_images_by_index_and_label(ds):
    by_label = select_images(ds, "test", label=4, n=3)
    assert list(by_label.indices) == [48, 49, 50]  # the first three 4s, in canonical order
    assert set(by_label.labels) == {4}
    assert by_label.names()[0] == "#48 (4)"
    by_index = select_images(ds, "train", indices=[5, 1])
    np.testing.assert_array_equal(by_index.images, ds.train_images[[5, 1]])
    with pytest.raises(ConfigError, match="outside the test split"):
        select_images(ds, "test", indices=[10_000])
    with pytest.raises(ConfigError, match="label 12"):
        select_images(ds, "test", label=12)
    # n=0 once read as "no test image has label 4", and a negative n sliced off the last images
    for n in (0, -1):
        with pytest.raises(ConfigError, match=f"n={n} chooses no images; give n >= 1"):
            select_images(ds, "test", label=4, n=n)
        with pytest.raises(ConfigError, match=f"n={n} chooses no images"):
            select_images(ds, "test", n=n)


def test_layer_helpers(net, mlp):
    shapes = layer_shapes(net)
    assert shapes["conv1"] == (4, 26, 26) and shapes["dense1"] == (6,)
    assert default_layers(net) == ["conv1", "dense1"]
    assert last_conv_layer(net) == "conv1" and last_hidden_dense_layer(net) == "dense1"
    assert last_conv_layer(mlp) is None and last_hidden_dense_layer(mlp) == "hidden1"


# ----- compare -----

def test_compare_recovers_the_planted_unit(net, ds):
    comparison = compare_classes(
        net, ds, 4, 9, n=4
    )  # the first four 9s: two with the middle square, two without
    conv = comparison.contrasts["conv1"]
    # Conv output (i, j) sees pixels i..i+2, j..j+2: the positions that can see a square.
    near_corner = (slice(CORNER[0].start - 2, CORNER[0].stop), slice(CORNER[1].start - 2, CORNER[1].stop))
    near_middle = (slice(MIDDLE[0].start - 2, MIDDLE[0].stop), slice(MIDDLE[1].start - 2, MIDDLE[1].stop))
    # Red only where the corner square (which only 4s have) can be seen, yellow only around the
    # middle square (all 4s, some 9s); map 0, the brightness detector, has both.
    red, yellow = conv.red.copy(), conv.yellow.copy()
    assert red[0].any() and yellow[0].any()
    assert red[(slice(None),) + near_corner].sum() == red.sum() > 0
    assert yellow[(slice(None),) + near_middle].sum() == yellow.sum() > 0
    assert 0 in conv.units_with(conv.red)
    # Dense node 0 reads the corner: red there, and the best-ranked node over the whole classes.
    assert comparison.contrasts["dense1"].red[0]
    dense = comparison.rankings["dense1"]
    assert dense.order()[0] == 0 and dense.auc[0] == 1.0 and dense.smd[0] > 3
    assert comparison.rankings["conv1"].order()[0] == 0 and comparison.rankings["conv1"].auc[0] == 1.0
    top = comparison.table(10)
    perfect = {(r["layer"], r["unit"]) for r in top if r["auc"] == 1.0}
    assert {("conv1", 0), ("dense1", 0)} <= perfect
    assert [r["auc"] for r in top] == sorted((r["auc"] for r in top), key=lambda v: -abs(v - 0.5))
    row = next(r for r in top if (r["layer"], r["unit"]) == ("conv1", 0))
    assert row["favours"] == "A" and row["red"] > 0 and row["yellow"] > 0


def test_compare_on_an_mlp(mlp, ds):
    comparison = compare_classes(mlp, ds, 4, 9, n=3)
    assert comparison.layers == ["hidden1"]
    assert list(np.flatnonzero(comparison.contrasts["hidden1"].red)) == [0]
    assert comparison.rankings["hidden1"].order()[0] == 0


def test_contrast_thresholds_by_hand():
    a = np.array([[1.0, 0.9, 0.0, 0.6], [0.8, 1.0, 0.0, 0.7]])
    b = np.array([[0.0, 0.9, 0.0, 0.1], [0.1, 0.2, 0.0, 0.0]])
    c = contrast_layer(a, b, rel=0.5)  # dense: strong = at least half the layer's peak (1.0)
    assert list(c.red) == [True, False, False, True]
    assert list(c.yellow) == [False, True, False, False]
    with pytest.raises(ConfigError):
        contrast_layer(a, b, rel=0)


def test_auc_and_smd_against_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (7, 3)).astype(float)  # small integers: many ties
    b = rng.integers(0, 4, (5, 3)).astype(float)
    expected = np.zeros(3)
    for u in range(3):
        wins = sum((x > y) + 0.5 * (x == y) for x, y in itertools.product(a[:, u], b[:, u]))
        expected[u] = wins / (len(a) * len(b))
    np.testing.assert_allclose(auc_scores(a, b), expected)
    pooled = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    np.testing.assert_allclose(standardized_mean_difference(a, b), (a.mean(0) - b.mean(0)) / pooled)
    ranking = rank_units(a, b, "x")
    assert ranking.kind == "node" and len(ranking.top(2)) == 2


# ----- ambiguous -----

def test_ambiguous_orders_by_margin_and_explains_with_class_means(net, ds):
    result = find_ambiguous(net, ds, (4, 9), n=5)
    proba = compute_activations(net, ds.test_images, ["output"])["output"]
    fours = np.flatnonzero(ds.test_labels == 4)
    margins = proba[fours, 4] - proba[fours, 9]
    expected = fours[np.argsort(margins, kind="stable")][:5]
    assert [c.index for c in result.cases] == list(expected)
    assert all(c.label == 4 and c.other == 9 for c in result.cases)
    assert [c.margin for c in result.cases] == sorted(c.margin for c in result.cases)
    assert result.layer == "dense1"
    dense = compute_activations(net, ds.test_images, ["dense1"])["dense1"]
    np.testing.assert_allclose(result.class_means[9], dense[ds.test_labels == 9].mean(axis=0), rtol=1e-5)
    case = result.cases[0]
    w, l = case.winner, 9 if case.winner == 4 else 4
    var = np.maximum(result.class_std**2, 1e-6 * max(float(np.max(result.class_std**2)), 1e-12))
    expected_pull = (
        (result.class_means[w] - result.class_means[l])
        * (case.activation - (result.class_means[w] + result.class_means[l]) / 2)
        / var
    )
    np.testing.assert_allclose(case.pull, expected_pull, rtol=1e-5)
    # Every 4 has the corner square, so node 0 (the corner reader) pulls toward "4" whenever 4 wins.
    for c in result.cases:
        if c.winner == 4:
            assert 0 in c.top_pull(3)


def test_ambiguous_correct_only_and_bad_pairs(net, ds):
    result = find_ambiguous(net, ds, (4, 9), n=50, correct_only=True)
    assert all(c.predicted == 4 for c in result.cases)
    with pytest.raises(ConfigError):
        find_ambiguous(net, ds, (4, 4))
    with pytest.raises(ConfigError):
        find_ambiguous(net, ds, (4, 11))


# ----- confusions -----

def test_confusions(net, ds):
    conf = confusions(net, ds)
    pred = net.predict(ds.test_images)
    for t in range(10):
        for p in range(10):
            assert conf.matrix[t, p] == np.sum((ds.test_labels == t) & (pred == p))
    true, predicted, count = conf.pairs(1)[0]
    idx = conf.misclassified(true, predicted)
    assert len(idx) == count
    assert list(conf.proba[idx, predicted]) == sorted(conf.proba[idx, predicted], reverse=True)


# ----- OIP -----

def test_multiscale_noise_is_standardized_and_per_unit():
    noise = multiscale_noise([0, 5, 9], (1, 4, 14), seed=3)
    assert noise.shape == (3, 28, 28)
    np.testing.assert_allclose(noise.mean(axis=(1, 2)), 0, atol=1e-9)
    np.testing.assert_allclose(noise.std(axis=(1, 2)), 1, atol=1e-9)
    np.testing.assert_array_equal(multiscale_noise([5], (1, 4, 14), seed=3)[0], noise[1])
    smooth = multiscale_noise([0], (14,), seed=0)[0]
    rough = multiscale_noise([0], (1,), seed=0)[0]
    # Neighbouring pixels of large-scale noise are far more alike than those of pixel noise.
    assert np.abs(np.diff(smooth, axis=1)).mean() < 0.3 * np.abs(np.diff(rough, axis=1)).mean()
    with pytest.raises(ConfigError):
        multiscale_noise([0], (0.5,))



def test_pen_strokes_are_ink_lines_on_black_per_unit():
    strokes = pen_strokes([0, 5], seed=3, attempt=2, variants=3)
    assert strokes.shape == (6, 28, 28) and strokes.min() >= 0 and strokes.max() <= 255
    inked = (strokes > 128).mean(axis=(1, 2))
    assert np.all(inked > 0.005) and np.all(inked < 0.3)  # a few thin strokes, mostly black
    np.testing.assert_array_equal(pen_strokes([5], seed=3, attempt=2, variants=3), strokes[3:])
    assert not np.array_equal(strokes[0], strokes[1])  # variants differ

def test_oip_raises_each_unit_well_above_its_start(net):
    result = optimize_inputs(net, "dense1", steps=40, seed=0)
    assert list(result.units) == list(range(6))
    assert result.images.shape == (6, 28, 28)
    assert result.images.min() >= 0 and result.images.max() <= 255
    assert not result.dead.any() and result.reached(10).all()
    assert np.all(result.final >= 10 * result.start)
    assert result.trace.shape == (41, 6)
    np.testing.assert_allclose(result.trace[-1], result.final)
    # The corner reader's best input lights the corner.
    assert result.images[0][CORNER].mean() > 200



def test_oip_ends_at_its_best(net):
    # The fade toward black shrinks with the steps: the last, small steps still climb instead of
    # losing ground to a fixed fade.
    result = optimize_inputs(net, "dense1", steps=40, seed=0)
    np.testing.assert_allclose(result.final, result.trace.max(axis=0), rtol=1e-3)

def test_oip_on_a_conv_map(net):
    # conv1 map 0 averages 3x3 pixels: its best input is a bright image, and each step can only
    # light the pixels next to already active positions, so it climbs steadily rather than fast.
    result = optimize_inputs(net, "conv1", [0], steps=60, blur=0, decay=0)  # pure ascent: never down
    assert result.final[0] > 10 * result.start[0]
    assert np.all(np.diff(result.trace[:, 0]) >= -1e-6)
    assert result.images[0].mean() > 50


def test_oip_result_says_whether_its_units_are_maps_or_nodes(net):
    # from the layer's shape, not its name: the gallery's caption reads it
    assert optimize_inputs(net, "pool1", [0], steps=1).unit_kind == "map"
    assert optimize_inputs(net, "dense1", [0], steps=1).unit_kind == "node"


def test_oip_is_deterministic_and_batch_independent(net):
    both = optimize_inputs(net, "dense1", [0, 2], steps=15, seed=7)
    again = optimize_inputs(net, "dense1", [0, 2], steps=15, seed=7)
    alone = optimize_inputs(net, "dense1", [2], steps=15, seed=7)
    other = optimize_inputs(net, "dense1", [0, 2], steps=15, seed=8)
    np.testing.assert_array_equal(both.images, again.images)
    np.testing.assert_allclose(alone.images[0], both.images[1], atol=1e-3)
    assert not np.allclose(other.images, both.images)


def test_oip_works_for_an_mlp_through_its_input_gradient(mlp):
    result = optimize_inputs(mlp, "hidden1", steps=40)
    alive = ~result.dead
    assert alive.sum() >= 6
    assert np.all(result.final[alive] > 10 * np.maximum(result.start[alive], 1e-6))
    # The planted corner node learns to want its corner lit.
    assert result.images[0][CORNER].mean() > 200


def test_oip_reports_dead_units():
    net = planted_convnet()
    net.kb[1] = -1e3  # no input in 0..255 can wake this map
    result = optimize_inputs(net, "conv1", [0, 1], steps=5, restarts=2)
    assert list(result.dead) == [False, True]
    assert not result.reached()[1]
    assert np.isnan(result.gain()[1])


def test_oip_argument_checks(net):
    with pytest.raises(ConfigError, match="unit 9"):
        optimize_inputs(net, "conv1", [9])
    with pytest.raises(ConfigError, match="valid layers"):
        optimize_inputs(net, "conv7")
    assert parse_units("0-3,7", 8) == [0, 1, 2, 3, 7]
    assert parse_units(None, 3) == [0, 1, 2]
    with pytest.raises(ConfigError):
        parse_units("0-200", 128)
