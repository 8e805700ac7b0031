"""The activations a CNN spec may name: one table, used by the spec (which names are valid where)
and by the model (which torch module applies it, which function turns logits into probabilities).

Adding one is one row: its name, the torch.nn class (and arguments) that applies it, and whether
it may follow a hidden layer, the output layer, or both. Importing this module never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Activation:
    """An activation: the torch.nn class that applies it, and where a spec may use it."""

    name: str
    torch_class: str
    torch_kwargs: tuple[tuple[str, Any], ...] = ()
    hidden: bool = True  # after a hidden conv or dense layer
    output: bool = False  # on the output layer: turns logits into probabilities

    def module(self) -> nn.Module:
        from torch import nn

        return getattr(nn, self.torch_class)(**dict(self.torch_kwargs))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        # In place: a conv's or linear layer's backward needs its input, not its output, so ReLU
        # may overwrite the output and save a pass over the largest maps.
        Activation("relu", "ReLU", (("inplace", True),)),
        Activation("sigmoid", "Sigmoid", output=True),
        Activation("elu", "ELU"),
        Activation("tanh", "Tanh"),
        Activation("linear", "Identity"),
        # torch's and ONNX's default slope
        Activation("leaky_relu", "LeakyReLU", (("negative_slope", 0.01),)),
        Activation("softmax", "Softmax", (("dim", 1),), hidden=False, output=True),
    )
}
HIDDEN_ACTIVATIONS = tuple(name for name, a in ACTIVATIONS.items() if a.hidden)
OUTPUT_ACTIVATIONS = tuple(name for name, a in ACTIVATIONS.items() if a.output)
