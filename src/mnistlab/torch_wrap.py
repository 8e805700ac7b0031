"""Any PyTorch module as an InspectableModel: ``mnistlab.from_torch(module, preprocess="unit")``.

The module maps (N, 1, 28, 28) or (N, 784) inputs to 10 logits or probabilities. Activations come
from forward hooks on its named submodules, input gradients from autograd, so every analysis in
``mnistlab.inspect`` (activation grids, compare, ambiguous, confusions, OIPs, the report) runs on it.

Layer names are the submodules' qualified names (``features.0``, ``fc1``) plus ``output``, the
class probabilities. By default every leaf submodule that runs exactly once per forward pass is a
layer (a module called twice has no single activation), in the order they run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .data.preprocess import Preprocessor
from .errors import ConfigError
from .model_api import InspectableModel

INPUT_LAYOUTS = ("image", "flat")  # (N, 1, 28, 28) or (N, 784)
OUTPUTS = ("logits", "probabilities", "auto")


class TorchModel(InspectableModel):
    kind = "torch"

    def __init__(
        self,
        module: nn.Module,
        preprocess: Preprocessor,
        layers: Sequence[str] | None = None,
        input_layout: str = "auto",
        output: str = "auto",
        batch_size: int = 256,
    ):
        if not isinstance(module, nn.Module):
            raise ConfigError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
        if output not in OUTPUTS:
            raise ConfigError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}")
        self.module = module.eval()
        self.preprocess = preprocess
        self.batch_size = batch_size
        try:
            self.device = next(module.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        self.input_layout = self._find_layout(input_layout)
        probe = self._probe()
        self._check_classes(probe["__output__"])
        self.output = output if output != "auto" else self._guess_output(probe["__output__"])
        if layers is None:
            layers = [name for name, _ in probe["__order__"]]
        else:
            known = dict(module.named_modules())
            unknown = [name for name in layers if name not in known or name == ""]
            if unknown:
                valid = ", ".join(name for name, _ in probe["__order__"])
                raise ConfigError(f"the module has no submodule {unknown[0]!r}; its layers: {valid}")
        self._layers = [name for name in layers if name != "output"]
        self._shapes = {name: shape for name, shape in probe["__order__"]}

    # ----- set-up -----

    def _as_input(self, x: torch.Tensor, layout: str | None = None) -> torch.Tensor:
        layout = layout or self.input_layout
        return x.reshape(len(x), 784) if layout == "flat" else x.reshape(len(x), 1, 28, 28)

    def _find_layout(self, layout: str) -> str:
        if layout != "auto":
            if layout not in INPUT_LAYOUTS:
                raise ConfigError(f"input_layout {layout!r}: choose one of auto, {', '.join(INPUT_LAYOUTS)}")
            return layout
        zeros = torch.zeros(2, 28, 28, device=self.device)
        for candidate in INPUT_LAYOUTS:
            try:
                with torch.inference_mode():
                    out = self.module(self._as_input(zeros, candidate))
                if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == 2:
                    return candidate
            except RuntimeError:
                continue
        raise ConfigError(
            "the module takes neither (N, 1, 28, 28) nor (N, 784) inputs to (N, classes) outputs; "
            "wrap it so that it does"
        )

    @staticmethod
    def _check_classes(out: torch.Tensor) -> None:
        # caught here: the analyses index outputs by the dataset's class and would fail far from the cause
        from .data import DATASETS

        classes = sorted({len(d.class_names) for d in DATASETS.values()})
        if out.shape[1] not in classes:
            raise ConfigError(
                f"the module gives {out.shape[1]} outputs per image; mnistlab's datasets have "
                f"{' or '.join(map(str, classes))} classes, so its last layer must give one per class"
            )

    def _probe(self) -> dict:
        """Run two blank images once: which leaf modules run, in which order, with which output shape."""
        calls: dict[str, list] = {}
        handles = []
        for name, sub in self.module.named_modules():
            if name and not list(sub.children()):
                handles.append(
                    sub.register_forward_hook(
                        lambda _m, _i, out, name=name: calls.setdefault(name, []).append(out)
                    )
                )
        try:
            with torch.inference_mode():
                out = self.module(self._as_input(torch.zeros(2, 28, 28, device=self.device)))
        finally:
            for handle in handles:
                handle.remove()
        order = [
            (name, tuple(outs[0].shape[1:]))
            for name, outs in calls.items()
            if len(outs) == 1 and isinstance(outs[0], torch.Tensor) and outs[0].dim() >= 2
        ]
        return {"__order__": order, "__output__": out}

    @staticmethod
    def _guess_output(out: torch.Tensor) -> str:
        out = out.detach().float()
        rows_sum_to_one = bool(torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-4))
        return "probabilities" if rows_sum_to_one and bool((out >= 0).all()) else "logits"

    # ----- the interface -----

    def layer_names(self) -> list[str]:
        return [*self._layers, "output"]

    def _tensor(self, inputs: np.ndarray) -> torch.Tensor:
        inputs = np.asarray(inputs, np.float32)
        if inputs.ndim == 2:
            inputs = inputs[None]
        if inputs.ndim != 3 or inputs.shape[1:] != (28, 28):
            raise ConfigError(f"expected inputs of shape (N, 28, 28), got {inputs.shape}")
        return torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device)

    def _probabilities(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.output == "probabilities" else torch.softmax(out, dim=1)

    def _run(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.module.named_modules())
        # a clone: an in-place activation after the module (ReLU(inplace=True)) would overwrite its output
        handles = [
            modules[name].register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(name, out.clone())
            )
            for name in layers
            if name != "output"
        ]
        try:
            captured["output"] = self._probabilities(self.module(self._as_input(x)))
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def activations_from_inputs(self, inputs: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        layers = self.check_layers(layers)
        x_all = self._tensor(inputs)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        with torch.inference_mode():
            for start in range(0, len(x_all), self.batch_size):
                got = self._run(x_all[start : start + self.batch_size], layers)
                for name in layers:
                    value = got[name].detach().float()
                    parts[name].append(
                        value.reshape(len(value), -1).cpu().numpy()
                        if value.dim() == 2
                        else value.cpu().numpy()
                    )
        return {
            name: np.concatenate(chunks) if chunks else np.zeros((0, *self._shape(name)), np.float32)
            for name, chunks in parts.items()
        }

    def _shape(self, name: str) -> tuple[int, ...]:
        return (10,) if name == "output" else self._shapes.get(name, ())

    def input_gradient(
        self, inputs: np.ndarray, layer: str, units: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        (layer,) = self.check_layers([layer])
        x = self._tensor(inputs).clone().requires_grad_(True)
        units_arr = np.asarray(units, dtype=np.int64).reshape(-1)
        if len(units_arr) != len(x):
            raise ConfigError(f"got {len(units_arr)} units for {len(x)} inputs; give one unit per input")
        with torch.enable_grad():
            out = self._run(x, [layer])[layer]
            width = out.shape[1]
            if len(units_arr) and (units_arr.min() < 0 or units_arr.max() >= width):
                raise ConfigError(f"a unit is out of range for {layer} (0..{width - 1})")
            picked = out[torch.arange(len(x), device=x.device), torch.from_numpy(units_arr).to(x.device)]
            values = picked.flatten(1).mean(1) if picked.dim() > 1 else picked
            (grad,) = torch.autograd.grad(values.sum(), x)
        return values.detach().float().cpu().numpy(), grad.detach().float().cpu().numpy()


def from_torch(
    module: nn.Module,
    preprocess: str | Preprocessor = "unit",
    layers: Sequence[str] | None = None,
    *,
    input_layout: str = "auto",
    output: str = "auto",
) -> TorchModel:
    """Wrap a PyTorch module for inspection.

    ``preprocess``: what the module expects done to raw pixels (0..255): ``"unit"`` (/ 255),
    ``"none"``, or a fitted ``Preprocessor`` (e.g. ``Preprocessor.fit("standard", ds.train_images)``).
    ``layers``: submodule names to expose (default: every leaf module that runs once per pass).
    ``input_layout``: ``"image"`` (N, 1, 28, 28), ``"flat"`` (N, 784) or ``"auto"`` (tried in that order).
    ``output``: ``"logits"`` (softmax is applied), ``"probabilities"``, or ``"auto"`` (judged on
    blank images).
    """
    if isinstance(preprocess, str):
        if preprocess not in ("unit", "none"):
            raise ConfigError(
                f"preprocess {preprocess!r}: give 'unit', 'none' or a fitted Preprocessor "
                "(Preprocessor.fit('standard', dataset.train_images))"
            )
        preprocess = Preprocessor.fit(preprocess, np.zeros((1, 28, 28), np.uint8))
    return TorchModel(module, preprocess, layers, input_layout, output)
