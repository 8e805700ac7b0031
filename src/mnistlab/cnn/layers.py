"""The CNN's layer kinds: one registry, one class per kind.

A kind owns everything about itself, and every caller asks it rather than switching on a name:

* its spec token and arguments (``args``: name, converter, default, aliases), which give parsing,
  ``to_token`` (the one-line syntax) and ``to_dict`` (the run manifest) for free;
* ``infer``: output shape and trainable parameter count from the input shape (the dry pass);
* ``build``: the torch modules of its block (torch is imported there, so parsing, shapes and
  summaries stay torch-free);
* ``role`` for inspection: ``map`` (learned feature maps), ``vector`` (learned units),
  ``pass-through`` (a rearrangement or summary of the layer before it: pooling, flatten), or
  ``attached`` (batch norm, dropout: folded into the block they follow, never a layer of its own);
* ``naming``: ``numbered`` (``conv1``, ``conv2``), ``single`` (``flatten``: at most one), or
  ``attached`` (``conv1_bn``);
* what the trainer may do with it: ``commutes_with_relu`` (max pooling may run before the ReLU of
  the block it follows), ``batch_split_exact`` (a batch split across threads gives the same
  result: false for batch norm and dropout) and ``input_extent`` (the rows and columns of its
  input that the top-left part of its output reads, so the network skips what nothing reads).

Adding a kind: subclass ``LayerKind``, set those attributes, write ``infer`` and ``build`` (and
``attach`` for an attached kind), decorate it with ``@register``. Nothing else changes. Adding an
option to a kind (as conv ``dilation`` and ``bias`` were, for imported models) is one more ``Arg``
(``layer_args.py``) with a default; give it ``stored_at_default=False`` so manifests of runs that
do not use it stay as they were and older mnistlab versions still read them, and
``positional=False`` so specs written positionally keep their meaning. See
docs/adding-a-layer-kind.md for a worked example.

Activations live in one table, ``activations.ACTIVATIONS``, used by the spec (which names are
valid where) and the model (which torch module or probability function to build).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError
from .activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from .layer_args import (  # noqa: F401 - the converters and Arg belong to the registry's vocabulary
    PADDINGS,
    REQUIRED,
    Arg,
    activation,
    boolean,
    dropout_rate,
    padding,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:  # the torch types only; importing this module never imports torch
    from torch import nn

    from .spec import LayerInfo

MAP, VECTOR, PASS_THROUGH, ATTACHED = "map", "vector", "pass-through", "attached"


# ----------------------------------------------------------------------------------------------
# The layer record


@dataclass(frozen=True)
class Layer:
    """One layer of a spec: its kind's name and its arguments, every default filled in, in the
    kind's order (so equal layers compare equal however they were written). ``layer.units``,
    ``layer.act`` ... read an argument; ``layer.get(name)`` reads one the kind may not have."""

    type: str
    args: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("type", "args"):
            raise AttributeError(name)
        for key, value in self.args:
            if key == name:
                return value
        raise AttributeError(f"a {self.type} layer has no argument {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)

    @property
    def kind(self) -> LayerKind:
        return KINDS[self.type]

    def to_dict(self) -> dict[str, Any]:
        return self.kind.to_dict(self)

    def to_token(self) -> str:
        """This layer in the one-line syntax (defaults left out)."""
        return self.kind.to_token(self)


# ----------------------------------------------------------------------------------------------
# Kinds


class LayerKind:
    """One kind of layer; the class attributes and methods below are everything mnistlab knows about it."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    args: ClassVar[tuple[Arg, ...]] = ()
    example: ClassVar[str] = ""  # shown when a required argument is missing
    role: ClassVar[str] = PASS_THROUGH
    naming: ClassVar[str] = "numbered"
    keras_name: ClassVar[str] = ""  # the summary table's Type column
    commutes_with_relu: ClassVar[bool] = False
    batch_split_exact: ClassVar[bool] = True

    @property
    def attached(self) -> bool:
        return self.role == ATTACHED

    # ----- the spec language
    def make(self, values: Mapping[str, Any], where: str) -> Layer:
        """A Layer from raw (already de-aliased) argument values: converted, checked, defaults filled."""
        by_name = {a.name: a for a in self.args}
        for key in values:
            if key not in by_name:
                raise ConfigError(
                    f"{where}: unknown argument {key!r}; {self.name} takes: {', '.join(by_name) or 'nothing'}"
                )
        converted = {key: by_name[key].convert(value, where, key) for key, value in values.items()}
        missing = [a.name for a in self.args if a.default is REQUIRED and a.name not in converted]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)} (e.g. {self.example})")
        for arg in self.args:
            if arg.name not in converted:
                converted[arg.name] = arg.default_for(converted)
        return Layer(self.name, tuple((a.name, converted[a.name]) for a in self.args))

    def canonical_key(self, key: str) -> str:
        for arg in self.args:
            if key in arg.aliases:
                return arg.name
        return key

    def _non_default(self, layer: Layer) -> list[Arg]:
        values = dict(layer.args)
        return [a for a in self.args if a.default is not REQUIRED and values[a.name] != a.default_for(values)]

    def to_token(self, layer: Layer) -> str:
        values = dict(layer.args)
        parts = [_format(values[a.name]) for a in self.args if a.default is REQUIRED]
        parts += [f"{a.name}={_format(values[a.name])}" for a in self._non_default(layer)]
        return ":".join([self.name, *parts])

    def to_dict(self, layer: Layer) -> dict[str, Any]:
        changed = set(a.name for a in self._non_default(layer))
        return {
            "type": self.name,
            **{a.name: layer.get(a.name) for a in self.args if a.stored_at_default or a.name in changed},
        }

    # ----- the dry pass and the summary
    def infer(
        self, layer: Layer, shape: tuple[int, ...], where: str, previous: LayerInfo | None
    ) -> tuple[tuple[int, ...], int]:
        """(output shape, trainable parameters) for an input of ``shape`` (no batch dimension)."""
        raise NotImplementedError

    def non_trainable_params(self, layer: Layer, shape: tuple[int, ...]) -> int:
        return 0

    def input_extent(self, layer: Layer, info: LayerInfo, rows: int, cols: int) -> tuple[int, int] | None:
        """The top-left (rows, cols) of the input that the top-left (rows, cols) of the output reads
        and nothing else does; None where the output may depend on all of it (the default)."""
        return None

    def summary_note(self, layer: Layer) -> str:
        """What the summary's Type column adds after ``keras_name`` (the activation, the rate)."""
        act = layer.get("act")
        return f" {act}" if act else ""

    # ----- torch
    def build(self, info: LayerInfo) -> nn.Sequential:
        """The block of a named layer: torch modules whose names are part of the weights' keys."""
        raise NotImplementedError

    def attach(self, block: nn.Sequential, info: LayerInfo) -> None:
        """An attached kind adds its module to the block of the layer it follows."""
        raise NotImplementedError


def _block(**modules: nn.Module) -> nn.Sequential:
    """A block from named modules; the names are part of the weights' keys (``conv1.conv.weight``)."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict(modules))


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


KINDS: dict[str, LayerKind] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[LayerKind]) -> type[LayerKind]:
    KINDS[cls.name] = cls()
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def find_kind(name: str) -> LayerKind | None:
    """The kind a spec names (its own name or an alias, any case), or None."""
    text = str(name).lower()
    return KINDS.get(_ALIASES.get(text, text))


def _map_input(shape: tuple[int, ...], where: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ConfigError(
            f"{where}: needs a (channels, height, width) input but gets the flat {shape}; "
            "move it before flatten"
        )
    return shape  # type: ignore[return-value]


def _window(
    shape: tuple[int, ...],
    k: int,
    stride: int,
    pad: int | tuple[int, int, int, int],
    where: str,
    what: str,
    fix: str,
) -> tuple[int, int]:
    """Output height and width of a k x k window sliding with ``stride`` over a map padded by ``pad``
    (one amount on every side, or (left, right, top, bottom))."""
    _, h, w = _map_input(shape, where)
    left, right, top, bottom = (pad,) * 4 if isinstance(pad, int) else pad
    if h + top + bottom < k or w + left + right < k:
        raise ConfigError(
            f"{where}: the {h}x{w} map is smaller than the {k}x{k} {what}; remove a layer or {fix}"
        )
    return (h + top + bottom - k) // stride + 1, (w + left + right - k) // stride + 1


@register
class Conv(LayerKind):
    name, aliases, example = "conv", ("conv2d",), "conv:32:3"
    args = (
        Arg("filters", positive_int),
        Arg("kernel", positive_int, aliases=("kernel_size",)),
        Arg("stride", positive_int, 1),
        Arg("pad", padding, "valid", aliases=("padding",)),
        Arg("act", activation(HIDDEN_ACTIVATIONS), "relu", aliases=("activation",)),
        # options added for imported models; left out of manifests at their defaults
        Arg("dilation", positive_int, 1, stored_at_default=False, positional=False),
        Arg("bias", boolean, True, stored_at_default=False, positional=False),
    )
    role, keras_name = MAP, "Conv2D"

    @staticmethod
    def span(layer: Layer) -> int:
        """The kernel's extent on the input, dilation included."""
        return layer.get("dilation", 1) * (layer.kernel - 1) + 1

    @classmethod
    def pads(cls, layer: Layer, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(left, right, top, bottom). ``same`` pads (span - 1) // 2 on every side; ``tf_same`` is
        TensorFlow's rule: output ceil(size / stride), an odd extra pixel at the bottom and right."""
        if layer.pad == "tf_same":

            def split(size: int) -> tuple[int, int]:
                total = max((-(-size // layer.stride) - 1) * layer.stride + cls.span(layer) - size, 0)
                return total // 2, total - total // 2

            (top, bottom), (left, right) = split(shape[1]), split(shape[2])
            return left, right, top, bottom
        if layer.pad in ("same", "valid"):
            return ((cls.span(layer) - 1) // 2 if layer.pad == "same" else 0,) * 4
        return (int(layer.pad),) * 4

    def infer(self, layer, shape, where, previous):
        if layer.pad == "same" and self.span(layer) % 2 == 0:
            raise ConfigError(
                f"{where}: pad=same needs an odd kernel; use an odd kernel, pad=tf_same or an integer pad"
            )
        pads = self.pads(layer, _map_input(shape, where))
        oh, ow = _window(shape, self.span(layer), layer.stride, pads, where, "kernel", "use pad=same")
        bias = layer.filters if layer.get("bias", True) else 0
        return (layer.filters, oh, ow), layer.filters * shape[0] * layer.kernel**2 + bias

    def input_extent(self, layer, info, rows, cols):
        if any(self.pads(layer, info.input_shape)):  # padding is added at the far edges too
            return None
        return (rows - 1) * layer.stride + self.span(layer), (cols - 1) * layer.stride + self.span(layer)

    def build(self, info):
        from torch import nn

        layer = info.layer
        left, right, top, bottom = self.pads(layer, info.input_shape)
        symmetric = left == right == top == bottom
        conv = nn.Conv2d(
            info.input_shape[0], layer.filters, layer.kernel, layer.stride,
            left if symmetric else 0, dilation=layer.dilation, bias=layer.bias,
        )  # fmt: skip
        act = ACTIVATIONS[layer.act].module()
        if symmetric:
            return _block(conv=conv, act=act)
        return _block(pad=nn.ZeroPad2d((left, right, top, bottom)), conv=conv, act=act)


class _Pooling(LayerKind):
    """A size x size window sliding with ``stride`` over each map: channels kept, no parameters."""

    args = (
        Arg("size", positive_int, aliases=("pool_size",)),
        Arg("stride", positive_int, lambda values: values["size"]),
    )

    def infer(self, layer, shape, where, previous):
        oh, ow = _window(shape, layer.size, layer.stride, 0, where, "pool window", "use a smaller window")
        return (shape[0], oh, ow), 0

    def input_extent(self, layer, info, rows, cols):
        # floor mode: a window that does not fit is dropped, and the rows it would read with it
        return (rows - 1) * layer.stride + layer.size, (cols - 1) * layer.stride + layer.size


@register
class MaxPool(_Pooling):
    name, aliases, example = "pool", ("maxpool", "maxpooling", "maxpool2d", "maxpooling2d"), "pool:2"
    keras_name = "MaxPool2D"
    # max(relu(a), relu(b)) == relu(max(a, b)) exactly, gradients included
    commutes_with_relu = True

    def build(self, info):
        from torch import nn

        return _block(pool=nn.MaxPool2d(info.layer.size, info.layer.stride))


@register
class AvgPool(_Pooling):
    name, aliases, example = "avgpool", ("avgpool2d", "averagepooling", "averagepooling2d"), "avgpool:2"
    keras_name = "AvgPool2D"

    def build(self, info):
        from torch import nn

        return _block(pool=nn.AvgPool2d(info.layer.size, info.layer.stride))


@register
class GlobalAvgPool(LayerKind):
    """Each map's mean: (C, H, W) -> (C,), the flat input a dense or output layer needs."""

    name, aliases = "gap", ("globalavgpool", "globalaveragepooling2d", "global_avg_pool")
    naming, keras_name = "single", "GlobalAvgPool2D"

    def infer(self, layer, shape, where, previous):
        return (_map_input(shape, where)[0],), 0

    def build(self, info):
        from torch import nn

        return _block(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())


@register
class Flatten(LayerKind):
    name, naming, keras_name = "flatten", "single", "Flatten"

    def infer(self, layer, shape, where, previous):
        if len(shape) != 3:
            raise ConfigError(f"{where}: the input is already flat {shape}; remove this flatten")
        return (shape[0] * shape[1] * shape[2],), 0

    def build(self, info):
        from .flatten import Flatten

        return _block(flatten=Flatten())


def _flat_input(shape: tuple[int, ...], where: str) -> int:
    if len(shape) != 1:
        raise ConfigError(f"{where}: needs a flat input but gets maps {shape}; put flatten before it")
    return shape[0]


@register
class Dense(LayerKind):
    name, aliases, example = "dense", ("linear", "fc"), "dense:70"
    # softmax or sigmoid only as the last layer, which the spec then reads as ``output``
    args = (
        Arg("units", positive_int),
        Arg("act", activation(tuple(ACTIVATIONS)), "relu", aliases=("activation",)),
        Arg("bias", boolean, True, stored_at_default=False, positional=False),
    )
    role, keras_name = VECTOR, "Dense"

    def infer(self, layer, shape, where, previous):
        return (layer.units,), _flat_input(shape, where) * layer.units + (layer.units if layer.bias else 0)

    def build(self, info):
        from torch import nn

        return _block(
            linear=nn.Linear(info.input_shape[0], info.layer.units, bias=info.layer.bias),
            act=ACTIVATIONS[info.layer.act].module(),
        )


@register
class Output(LayerKind):
    """The last layer: its block gives logits; its activation gives probabilities (``probabilities``)
    and chooses the loss, so the trainer never applies it inside the network."""

    name, example, naming = "output", "output:10", "single"
    args = (
        Arg("units", positive_int),
        Arg("act", activation(OUTPUT_ACTIVATIONS), "softmax", aliases=("activation",)),
    )
    role, keras_name = VECTOR, "Dense"

    def infer(self, layer, shape, where, previous):
        return (layer.units,), _flat_input(shape, where) * layer.units + layer.units

    def build(self, info):
        from torch import nn

        return _block(linear=nn.Linear(info.input_shape[0], info.layer.units))


class _Attached(LayerKind):
    role, naming = ATTACHED, "attached"


@register
class BatchNorm(_Attached):
    name, aliases, keras_name = "bn", ("batchnorm", "batch_norm", "batchnormalization"), "BatchNorm"
    # eps: Keras's default is 1e-3, torch's 1e-5; after_act: normalize the activation's output
    # (Keras models often put BatchNormalization after Conv2D(activation="relu"))
    args = (
        Arg("eps", positive_float, 1e-5, stored_at_default=False, positional=False),
        Arg("after_act", boolean, False, stored_at_default=False, positional=False),
    )
    batch_split_exact = False  # statistics per part of a split batch differ from the whole batch's

    def infer(self, layer, shape, where, previous):
        if previous is None or previous.kind.role not in (MAP, VECTOR):
            raise ConfigError(f"{where}: batch norm must directly follow a conv or dense layer")
        return shape, 2 * shape[0]  # trainable scale and shift

    def non_trainable_params(self, layer, shape):
        return 2 * shape[0]  # running mean and variance (Keras counts them)

    def attach(self, block, info):
        from torch import nn

        channels = info.output_shape[0]
        norm = nn.BatchNorm2d if len(info.output_shape) == 3 else nn.BatchNorm1d
        if info.layer.after_act:
            block.add_module("bn", norm(channels, eps=info.layer.eps))
            return
        # between the linear part and the nonlinearity
        act = block._modules.pop("act")
        block.add_module("bn", norm(channels, eps=info.layer.eps))
        block.add_module("act", act)


@register
class Dropout(_Attached):
    name, example, keras_name = "dropout", "dropout:0.25", "Dropout"
    args = (Arg("rate", dropout_rate, aliases=("p",)),)
    batch_split_exact = False  # parts running in threads would read the random stream in racing order

    def infer(self, layer, shape, where, previous):
        return shape, 0

    def summary_note(self, layer):
        return f" {layer.rate:g}"

    def attach(self, block, info):
        from torch import nn

        block.add_module("dropout", nn.Dropout(info.layer.rate))


LAYER_TYPES = tuple(KINDS)

__all__ = [
    "ACTIVATIONS", "ATTACHED", "Arg", "HIDDEN_ACTIVATIONS", "KINDS", "LAYER_TYPES", "Layer", "LayerKind",
    "MAP", "OUTPUT_ACTIVATIONS", "PASS_THROUGH", "VECTOR", "find_kind", "register",
]
