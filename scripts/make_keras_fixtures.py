"""Write the Keras model files that mnistlab's importer is tested against, with Keras's own outputs.

Run once with the benchmark virtualenv (TensorFlow + Keras 3, and tf_keras for the legacy .h5):

    make bench-venv && .venv-bench/bin/pip install 'tf_keras==2.21.*'
    PYTHONPATH=src .venv-bench/bin/python scripts/make_keras_fixtures.py [--out tests/fixtures/keras]

It writes small models into the output directory and ``expected.json``: for each file, the MNIST
test indices, the preprocessing its input expects, and Keras's class probabilities for those images
(softmax of the outputs where a model ends in logits). The tests read only these files, so they
never need TensorFlow. Weights are random (seeded) except the seed CNN's, which is trained briefly
so that the web page and docs show a model that reads digits; batch-norm statistics and biases are
set to non-trivial values so that every parameter matters.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np

INDICES = list(range(8)) + [1302]  # test image 1302 is the lab's canonical "ambiguous 4"


def seed_layers(layers, tf_style: bool = False):
    """The seed article's CNN (96,844 parameters)."""
    return [
        layers.Conv2D(32, (3, 3), activation="relu", name="conv2d"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_1"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d_1"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_2"),
        layers.Flatten(name="flatten"),
        layers.Dense(70, activation="relu", name="dense"),
        layers.Dense(10, activation="softmax", name="dense_1"),
    ]


def randomize(model, rng) -> None:
    """Non-zero biases and batch-norm statistics, so a dropped or misplaced parameter shows."""
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        new = []
        for i, w in enumerate(weights):
            if kind == "BatchNormalization":
                # gamma, beta, moving mean, moving variance (variance must stay positive)
                w = rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.3, w.shape)
            elif w.ndim == 1:
                w = rng.normal(0, 0.1, w.shape)
            new.append(np.asarray(w, np.float32))
        layer.set_weights(new)


def build_keras3(keras, rng):
    """Models written with Keras 3: name -> (model, preprocess, file names)."""
    layers = keras.layers
    out = {}

    seed = keras.Sequential([keras.Input((28, 28, 1)), *seed_layers(layers)], name="seed")
    out["seed"] = (seed, "unit", ["seed.keras", "seed_keras3.h5"])

    # Stride-2 `same` convolutions with odd and even kernels (TensorFlow pads the extra row and
    # column at the bottom and right), dilation, no bias, batch norm with its own epsilon, Rescaling
    # (so the model takes raw pixels), activation and pooling layers of every kind.
    strided = keras.Sequential(
        [
            keras.Input((28, 28)),
            layers.Reshape((28, 28, 1)),
            layers.Rescaling(1.0 / 255, offset=-0.1),
            layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False, name="conv_s2_same"),
            layers.BatchNormalization(epsilon=1e-3, name="bn_a"),
            layers.Activation("relu"),
            layers.Conv2D(8, 4, strides=2, padding="same", activation="elu", name="conv_even_same"),
            layers.Conv2D(8, 3, dilation_rate=2, padding="same", activation="tanh", name="conv_dilated"),
            layers.AveragePooling2D(2, name="avg"),
            layers.Conv2D(10, 2, activation="sigmoid", name="conv_sigmoid"),
            layers.MaxPooling2D(2, strides=1, name="max_s1"),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(24, name="dense_linear"),
            layers.BatchNormalization(epsilon=0.01, name="bn_dense"),
            layers.ReLU(),
            layers.Dense(10, name="logits"),
            layers.Softmax(),
        ],
        name="strided",
    )
    out["strided_same"] = (strided, "none", ["strided_same.keras"])

    # Functional chain from flat (784,) input, global average pooling, ending in logits.
    inputs = keras.Input((784,), name="pixels")
    x = layers.Reshape((28, 28, 1))(inputs)
    x = layers.Conv2D(12, 5, strides=2, padding="valid", activation="relu", name="c1")(x)
    x = layers.Conv2D(16, 3, padding="same", name="c2")(x)
    x = layers.BatchNormalization(name="c2_bn")(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(10, name="head")(x)
    out["gap_functional"] = (
        keras.Model(inputs, logits, name="gap"),
        "unit",
        ["gap_functional.h5", "gap_functional.keras"],
    )

    # Dense only, one hidden activation, softmax output: the NumPy MLP can hold it.
    mlp = keras.Sequential(
        [
            keras.Input((784,)),
            layers.Dense(32, activation="tanh"),
            layers.Dropout(0.2),
            layers.Dense(16, activation="tanh"),
            layers.Dense(10, activation="softmax"),
        ],
        name="mlp",
    )
    out["dense_mlp"] = (mlp, "unit", ["dense_mlp.keras"])

    # conv2d_10 sorts before conv2d_2 by name: weights must follow the layer order.
    order = keras.Sequential(
        [keras.Input((28, 28, 1))]
        + [layers.Conv2D(3 + i, 3, activation="relu", name=f"conv2d_{n}") for i, n in enumerate((2, 10, 1))]
        + [layers.Flatten(), layers.Dense(10, activation="softmax", name="dense_10")],
        name="order",
    )
    out["name_order"] = (order, "unit", ["name_order.keras"])

    # Python code in a Lambda layer: the importer must refuse it without running it.
    lam = keras.Sequential(
        [
            keras.Input((784,)),
            layers.Lambda(lambda t: t * 2.0, name="doubler"),
            layers.Dense(10, activation="softmax"),
        ],
        name="lambda",
    )
    out["lambda_layer"] = (lam, None, ["lambda_layer.keras"])

    # A recurrent layer keeps its weights in a nested group (layers/lstm/cell/vars): the importer
    # must still name it as an unsupported layer class, not as a model inside the model.
    lstm = keras.Sequential(
        [keras.Input((28, 28)), layers.LSTM(4, name="lstm"), layers.Dense(10, activation="softmax")],
        name="lstm",
    )
    out["lstm_layer"] = (lstm, None, ["lstm_layer.keras"])
    return out


def build_tf_keras(tfk, rng):
    """Models written with tf.keras (Keras 2 format, the seed article's `model.save("cnn.h5")`)."""
    layers = tfk.layers
    out = {}
    seed = tfk.Sequential([layers.InputLayer(input_shape=(28, 28, 1)), *seed_layers(layers)], name="seed")
    out["seed"] = (seed, "unit", ["seed_tf_keras.h5"])
    dense = tfk.Sequential(
        [
            layers.Flatten(input_shape=(28, 28)),
            layers.Dense(24, activation="elu"),
            layers.Dense(16, activation="relu"),
            layers.Dense(10, activation="sigmoid"),
        ],
        name="dense_mixed",
    )
    out["dense_mixed"] = (dense, "unit", ["dense_mixed_tf_keras.h5"])
    conv = tfk.Sequential(
        [
            layers.InputLayer(input_shape=(28, 28, 1)),
            layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Conv2D(6, 3, padding="same", use_bias=False),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10),
            layers.Activation("softmax"),
        ],
        name="conv_legacy",
    )
    out["conv_legacy"] = (conv, "unit", ["conv_legacy_tf_keras.h5"])
    return out


def train_briefly(framework, model, ds):
    """One short epoch; returns an uncompiled copy, so the file holds no optimizer state."""
    x = ds.train_images[:6000].astype(np.float32)[..., None] / 255.0
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    model.fit(x, ds.train_labels[:6000].astype(np.int64), batch_size=64, epochs=1, verbose=0)
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def probabilities(model, inputs: np.ndarray) -> np.ndarray:
    shape = tuple(int(v) for v in model.inputs[0].shape[1:])
    out = np.asarray(model.predict(inputs.reshape((len(inputs), *shape)), verbose=0), np.float64)
    if not np.allclose(out.sum(axis=1), 1.0, atol=1e-4) and not (out.min() >= 0 and out.max() <= 1):
        out = np.exp(out - out.max(axis=1, keepdims=True))  # logits: the lab shows softmax of them
        out /= out.sum(axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/keras"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import keras

    from mnistlab.data import load_dataset

    keras.utils.set_random_seed(0)
    ds = load_dataset("mnist")
    images = ds.test_images[INDICES]
    rng = np.random.default_rng(0)
    expected: dict = {"indices": INDICES, "keras": keras.__version__, "models": {}}

    def record(name, model, preprocess, files, framework):
        if preprocess is None:
            for f in files:
                model.save(args.out / f)
            return
        inputs = images.astype(np.float32) / (255.0 if preprocess == "unit" else 1.0)
        probs = probabilities(model, inputs)
        for f in files:
            model.save(args.out / f)
            expected["models"][f] = {
                "model": name,
                "framework": framework,
                "preprocess": preprocess,
                "params": int(model.count_params()),
                "layers": [layer.name for layer in model.layers],
                "probabilities": probs.tolist(),
            }

    for name, (model, preprocess, files) in build_keras3(keras, rng).items():
        if name == "seed":
            model = train_briefly(keras, model, ds)
        elif preprocess is not None:
            randomize(model, rng)
        record(name, model, preprocess, files, f"keras {keras.__version__}")

    import tf_keras

    tf_keras.utils.set_random_seed(0)
    for name, (model, preprocess, files) in build_tf_keras(tf_keras, rng).items():
        if name == "seed":
            model = train_briefly(tf_keras, model, ds)
        else:
            randomize(model, rng)
        record(name, model, preprocess, files, f"tf_keras {tf_keras.__version__}")

    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(list(args.out.iterdir()))} files, {total / 1e6:.2f} MB, into {args.out}")


if __name__ == "__main__":
    main()
