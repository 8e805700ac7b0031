"""CNN specs: parsing in every form, the dry pass, presets' parameter counts, errors naming the layer."""

import json
import subprocess
import sys

import pytest

from mnistlab.cnn.spec import PRESETS, count_params, infer_shapes, parse_spec, summary_table
from mnistlab.errors import ConfigError

SEED = "conv:32:3,pool:2,conv:64:3,pool:2,conv:64:3,flatten,dense:70,output:10"


def test_seed_presets_have_the_articles_parameter_counts():
    assert count_params(parse_spec("seed")) == 96_844
    assert count_params(parse_spec("seed-vi")) == 208_982


def test_layer_names_and_shapes_of_the_seed():
    infos = infer_shapes(parse_spec("seed"))
    assert [i.name for i in infos] == [
        "conv1", "pool1", "conv2", "pool2", "conv3", "flatten", "dense1", "output",
    ]
    assert [i.output_shape for i in infos] == [
        (32, 26, 26), (32, 13, 13), (64, 11, 11), (64, 5, 5), (64, 3, 3), (576,), (70,), (10,),
    ]
    assert [i.params for i in infos] == [320, 0, 18_496, 0, 36_928, 0, 40_390, 710]


def test_one_line_dict_list_json_and_toml_forms_agree(tmp_path):
    one_line = parse_spec(SEED)
    assert parse_spec("seed") == one_line
    assert parse_spec(one_line.to_dict()) == one_line
    assert parse_spec(one_line.to_string()) == one_line
    assert parse_spec(SEED.replace(",", "  ")) == one_line
    as_list = [
        {"type": "conv", "filters": 32, "kernel": 3}, {"type": "maxpool", "size": 2}, ["conv", 64, 3],
        "pool:2", {"type": "conv", "filters": 64, "kernel_size": 3, "activation": "relu"}, "flatten",
        {"type": "dense", "units": 70}, {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    assert parse_spec(as_list) == one_line
    (tmp_path / "s.json").write_text(json.dumps(one_line.to_dict()))
    assert parse_spec(str(tmp_path / "s.json")) == one_line
    toml = "input = [1, 28, 28]\n" + "".join(
        "[[layers]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in layer.to_dict().items())
        for layer in one_line.layers
    )
    (tmp_path / "s.toml").write_text(toml)
    assert parse_spec(str(tmp_path / "s.toml")) == one_line


def test_options_padding_stride_activations_bn_dropout():
    spec = parse_spec(
        "conv:8:5:pad=same:act=elu,bn,conv:8:3:stride=2:act=tanh,dropout:0.25,flatten,dense:16:act=sigmoid,bn,output:3:sigmoid"
    )
    infos = infer_shapes(spec)
    assert [i.name for i in infos] == [
        "conv1", "conv1_bn", "conv2", "conv2_dropout", "flatten", "dense1", "dense1_bn", "output",
    ]
    assert infos[0].output_shape == (8, 28, 28)
    assert infos[2].output_shape == (8, 13, 13)
    assert spec.output_activation == "sigmoid" and spec.num_classes == 3
    assert parse_spec(spec.to_string()) == spec


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("seeed", "unknown spec or preset"),
        (
            "conv:32:3,pool:2,conv:64:3,pool:2,conv:64:3,pool:2,conv:64:3,flatten,output:10",
            "layer 7 (conv:64:3): the 1x1 map is smaller than the 3x3 kernel",
        ),
        ("conv:8:3,blah:3,flatten,output:10", "layer 2: unknown layer type 'blah'"),
        ("conv:0:3,flatten,output:10", "layer 1 (conv): filters='0' must be a positive integer"),
        ("conv:8:x,flatten,output:10", "layer 1 (conv): kernel='x'"),
        ("conv:8:3:act=softmax,flatten,output:10", "layer 1 (conv): unknown activation 'softmax'"),
        ("conv:8:3,output:10", "layer 2 (output:10): needs a flat input"),
        ("conv:8:3,flatten,pool:2,output:10", "layer 3 (pool:2): needs a (channels, height, width) input"),
        ("conv:8:3,flatten", "the last layer must be output"),
        ("conv:8:3,flatten,output:10,output:10", "layer 3 (output): output must be the last layer"),
        ("conv:8:3", "the last layer must be output"),
        ("bn,conv:8:3,flatten,output:10", "layer 1 (bn): batch norm must directly follow"),
        ("conv:8:3,dropout:1.0,flatten,output:10", "layer 2 (dropout): dropout rate"),
        (
            "conv:8:3,pool:30,flatten,output:10",
            "layer 2 (pool:30): the 26x26 map is smaller than the 30x30 pool window",
        ),
        ("conv:8:3:9:valid:relu:7,flatten,output:10", "too many arguments"),
        ("conv:8:3:foo=1,flatten,output:10", "unknown argument 'foo'"),
        ("", "empty spec"),
    ],
)
def test_bad_specs_name_the_layer_and_the_reason(text, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        parse_spec(text)
    assert fragment in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_spec(str(tmp_path / "missing.toml"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="invalid JSON"):
        parse_spec(str(tmp_path / "bad.json"))
    (tmp_path / "bad.toml").write_text("[[layers]]\ntype = 'conv'\nfilters = 8\n")
    with pytest.raises(ConfigError, match="bad.toml: layer 1 \\(conv\\): missing kernel"):
        parse_spec(str(tmp_path / "bad.toml"))


def test_summary_table_matches_keras_totals():
    table = summary_table(parse_spec("seed"))
    assert "Total params: 96,844" in table and "Trainable params: 96,844" in table
    assert "conv2" in table and "(None, 64, 11, 11)" in table and "18,496" in table
    assert "Total params: 208,982" in summary_table(parse_spec("seed-vi"))
    bn = summary_table(parse_spec("conv:8:3,bn,flatten,output:10"))
    assert "Non-trainable params: 16" in bn  # Keras counts running mean and variance


def test_presets_are_valid_and_importing_the_spec_needs_no_torch():
    for name in PRESETS:
        assert count_params(parse_spec(name)) > 0
    code = (
        "import sys, mnistlab, mnistlab.cnn, mnistlab.cnn.spec; mnistlab.cnn.parse_spec('seed'); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
