"""The layer-kind registry: every kind's token, shapes, parameters, torch block and inspection role,
with average pooling (avgpool) and global average pooling (gap) checked against NumPy."""

import subprocess
import sys

import numpy as np
import pytest

from mnistlab.cnn.layers import HIDDEN_ACTIVATIONS, KINDS, find_kind
from mnistlab.cnn.spec import count_params, infer_shapes, parse_spec, summary_table
from mnistlab.errors import ConfigError

EVERY_KIND = (
    "conv:6:3:pad=same,bn,avgpool:2,conv:8:3:act=tanh,dropout:0.1,pool:2,conv:8:3,gap,dense:12:act=elu,output:10"
)


def test_one_spec_uses_every_kind_and_round_trips():
    spec = parse_spec(EVERY_KIND)
    assert {layer.type for layer in spec.layers} | {"flatten"} == set(KINDS)
    assert parse_spec(spec.to_string()) == spec
    assert parse_spec(spec.to_dict()) == spec
    assert spec.to_string() == EVERY_KIND


def test_avgpool_and_gap_shapes_params_and_names():
    infos = infer_shapes(parse_spec(EVERY_KIND))
    assert [i.name for i in infos] == [
        "conv1",
        "conv1_bn",
        "avgpool1",
        "conv2",
        "conv2_dropout",
        "pool1",
        "conv3",
        "gap",
        "dense1",
        "output",
    ]
    shapes = {i.name: i.output_shape for i in infos}
    assert shapes["avgpool1"] == (6, 14, 14) and shapes["pool1"] == (8, 6, 6) and shapes["gap"] == (8,)
    params = {i.name: i.params for i in infos}
    assert params["avgpool1"] == 0 and params["gap"] == 0
    assert params["dense1"] == 8 * 12 + 12  # gap hands dense one value per map
    strided = infer_shapes(parse_spec("conv:4:3,avgpool:3:stride=2,flatten,output:10"))
    assert strided[1].output_shape == (4, 12, 12)  # (26 - 3) // 2 + 1
    assert (
        parse_spec("conv:4:3,avgpool:3:stride=2,flatten,output:10").to_string().split(",")[1]
        == "avgpool:3:stride=2"
    )
    table = summary_table(parse_spec(EVERY_KIND))
    assert "AvgPool2D" in table and "GlobalAvgPool2D" in table and "(None, 8)" in table


def test_aliases_name_the_same_kind():
    assert (
        find_kind("AveragePooling2D").name == "avgpool" and find_kind("GlobalAveragePooling2D").name == "gap"
    )
    as_list = [
        {"type": "conv", "filters": 4, "kernel_size": 3},
        {"type": "averagepooling2d", "pool_size": 2},
        {"type": "globalaveragepooling2d"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    assert parse_spec(as_list) == parse_spec("conv:4:3,avgpool:2,gap,output:10")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("conv:4:3,flatten,gap,output:10", "layer 3 (gap): needs a (channels, height, width) input"),
        ("conv:4:3,gap,flatten,output:10", "layer 3 (flatten): the input is already flat"),
        ("conv:4:3,gap,gap,output:10", "needs a (channels, height, width) input"),
        ("conv:4:3,avgpool:27,flatten,output:10", "the 26x26 map is smaller than the 27x27 pool window"),
        ("conv:4:3,avgpool,flatten,output:10", "layer 2 (avgpool): missing size (e.g. avgpool:2)"),
        ("conv:4:3,avgpool:2:pad=1,flatten,output:10", "unknown argument 'pad'; avgpool takes: size, stride"),
        ("conv:4:3,gap:2,output:10", "too many arguments"),
        ("conv:4:3,dense:5:act=softmax,flatten,output:10", "softmax is only for the last layer"),
    ],
)
def test_bad_avgpool_and_gap_name_the_layer_and_the_reason(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_spec(text)
    assert fragment in str(info.value)


def test_the_activation_table_is_the_spec_vocabulary():
    assert set(HIDDEN_ACTIVATIONS) == {"relu", "sigmoid", "elu", "tanh", "linear", "leaky_relu"}
    for name in HIDDEN_ACTIVATIONS:
        assert parse_spec(f"conv:4:3:act={name},flatten,output:10").layers[0].act == name
    with pytest.raises(
        ConfigError,
        match="unknown activation 'gelu'; choose one of: relu, sigmoid, elu, tanh, linear, leaky_relu",
    ):
        parse_spec("conv:4:3:act=gelu,flatten,output:10")


def test_the_registry_and_the_summary_need_no_torch():
    code = (
        "import sys; from mnistlab.cnn.layers import KINDS; "
        "from mnistlab.cnn import parse_spec, summary_table; "
        f"summary_table(parse_spec({EVERY_KIND!r})); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- torch: the blocks each kind builds -----

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # pytest -n 2 on 2 cores: more threads per worker only oversubscribe


def _cnn(spec):
    from mnistlab.cnn import CNN, build_net
    from mnistlab.data import Preprocessor

    pre = Preprocessor.fit("unit", np.zeros((2, 28, 28), np.uint8))
    return CNN(spec, pre, build_net(spec, init="glorot", seed=0))


def test_torch_parameters_match_the_dry_pass_for_every_kind():
    from mnistlab.cnn import Net

    net = Net(parse_spec(EVERY_KIND))
    assert sum(p.numel() for p in net.parameters()) == count_params(parse_spec(EVERY_KIND))
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # conv1 -> avgpool1: average pooling does not commute with ReLU; conv2 ends in tanh; conv3 feeds gap
    assert net.pool_first == {}
    assert Net(parse_spec("conv:4:3,pool:2,conv:4:3,avgpool:2,flatten,output:10")).pool_first == {
        "conv1": "pool1"
    }


def test_avgpool_and_gap_activations_equal_numpy_means():
    model = _cnn("conv:3:3,avgpool:2,conv:4:3,gap,output:10")
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    acts = model.activations(images)
    assert {k: v.shape for k, v in acts.items()} == {
        "conv1": (4, 3, 26, 26),
        "avgpool1": (4, 3, 13, 13),
        "conv2": (4, 4, 11, 11),
        "gap": (4, 4),
        "output": (4, 10),
    }
    np.testing.assert_allclose(
        acts["avgpool1"], acts["conv1"].reshape(4, 3, 13, 2, 13, 2).mean((3, 5)), atol=1e-6
    )
    np.testing.assert_allclose(acts["gap"], acts["conv2"].mean((2, 3)), atol=1e-6)
    # the training forward (no hooks) gives the same logits as the hooked inspection forward
    x = torch.from_numpy(model.to_inputs(images))
    with torch.no_grad():
        probs = model.net.probabilities(model.net(x)).numpy()
    np.testing.assert_allclose(probs, acts["output"], atol=1e-6)


def test_inspection_asks_the_roles_not_the_names():
    from mnistlab.inspect.activations import (
        default_layers,
        default_oip_layer,
        last_conv_layer,
        last_hidden_dense_layer,
    )

    model = _cnn("conv:3:3,avgpool:2,conv:4:3,avgpool:2,gap,dense:6,output:10")
    assert model.layer_roles() == {
        "conv1": "map",
        "avgpool1": "pass-through",
        "conv2": "map",
        "avgpool2": "pass-through",
        "gap": "pass-through",
        "dense1": "vector",
        "output": "vector",
    }
    assert default_layers(model) == ["conv1", "conv2", "dense1"]
    assert last_conv_layer(model) == "conv2" and default_oip_layer(model) == "conv2"
    assert last_hidden_dense_layer(model) == "dense1"
    assert (
        last_hidden_dense_layer(_cnn("conv:3:3,gap,output:10")) is None
    )  # gap's means are not learned units


@pytest.mark.parametrize(
    "spec, learns",
    [
        ("conv:8:3,avgpool:2,conv:16:3,avgpool:2,flatten,dense:32,output:10", True),
        # the synthetic classes differ only in where a bar is, which global means mostly erase
        ("conv:8:3:pad=same,avgpool:2,conv:16:3,gap,output:10", False),
    ],
)
def test_nets_with_avgpool_and_gap_train_save_and_reload(tmp_path, spec, learns):
    from mnistlab.cnn import Trainer, resolve_config
    from mnistlab.models import load_model
    from test_cnn_train import synthetic

    ds = synthetic(384, 128)
    config = resolve_config(
        spec=spec,
        epochs=4 if learns else 2,
        batch_size=32,
        lr=3e-3,
        amp="off",
        optimizer="adam",
        seed=3,
        preprocess="unit",
        init="default",
        threads=2,
    )
    trainer = Trainer(config, ds, tmp_path / "run", progress=False)
    assert trainer.levers.data_parallel == 2  # both kinds give the same result on a split batch
    result = trainer.run()
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    if learns:
        assert result.history[-1]["test_accuracy"] > 0.9  # chance is 0.1
    model = load_model(tmp_path / "run")
    assert (
        model.layer_names() == result.model.layer_names() == [i.name for i in infer_shapes(parse_spec(spec))]
    )
    np.testing.assert_allclose(
        model.predict_proba(ds.test_images), result.model.predict_proba(ds.test_images), atol=1e-6
    )
