"""Images of one class that come closest to another (the seed's test image 1302, a "4" that looks
like a "9"), found automatically by probability margin.

For each such image: its probability vector, its activations in the last hidden dense layer against
the mean activations of the two classes, and the nodes that pulled it toward the winner of the two.
A node's *pull* is its term in the log-likelihood ratio of the two classes under a Gaussian model
with per-node shared variance::

    pull_j = (mu_win_j - mu_lose_j) * (h_j - (mu_win_j + mu_lose_j) / 2) / var_j

positive when the node's value sits on the winner's side of the midpoint of the two class means,
weighted by how well the node separates the classes. It needs only activations, so it means the
same for both engines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset
from ..errors import ConfigError
from ..model_api import InspectableModel
from .activations import compute_activations, last_hidden_dense_layer


@dataclass
class AmbiguousCase:
    index: int
    label: int  # the true class (always pair[0])
    other: int  # pair[1]
    proba: np.ndarray  # (classes,)
    margin: float  # p[label] - p[other]; negative: the other class won
    winner: int  # whichever of the pair has the higher probability
    activation: np.ndarray = field(repr=False)  # (units,) of the dense layer
    pull: np.ndarray = field(repr=False)  # (units,) toward the winner (positive) or away

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.proba))

    means_gap: np.ndarray | None = field(default=None, repr=False)  # (units,) mean[winner] - mean[loser]

    def top_pull(self, k: int = 5, *, active_only: bool = True) -> list[int]:
        """Nodes pulling hardest toward the winner, strongest first (only positive pulls).

        ``active_only`` keeps the nodes that pull by being *on* (typical of the winner and active
        here), leaving out those that pull by being off where the losing class would have them on.
        """
        pull = self.pull.copy()
        if active_only and self.means_gap is not None:
            pull[self.means_gap <= 0] = 0
        order = np.argsort(-pull, kind="stable")[:k]
        return [int(j) for j in order if pull[j] > 0]


@dataclass
class AmbiguousResult:
    pair: tuple[int, int]
    layer: str | None
    cases: list[AmbiguousCase]
    class_means: dict[int, np.ndarray] = field(repr=False)  # the dense layer's mean per class of the pair
    class_std: np.ndarray | None = field(default=None, repr=False)  # pooled per-node std
    images: np.ndarray = field(default=None, repr=False)  # (n, 28, 28) of the cases
    split: str = "test"

    def table(self) -> list[dict]:
        a, b = self.pair
        return [
            {
                "index": c.index, "label": c.label, "predicted": c.predicted, f"p{a}": float(c.proba[a]),
                f"p{b}": float(c.proba[b]), "margin": c.margin, "top_pull": c.top_pull(5),
            }
            for c in self.cases
        ]


def find_ambiguous(
    model: InspectableModel,
    dataset: Dataset,
    pair: Sequence[int] = (4, 9),
    *,
    n: int = 6,
    split: str = "test",
    layer: str | None = None,
    correct_only: bool = False,
    proba: np.ndarray | None = None,
) -> AmbiguousResult:
    """The ``n`` images of class ``pair[0]`` in ``split`` with the smallest margin p[a] - p[b].

    ``correct_only`` keeps images still classified as ``pair[0]`` (the seed's 93.5%-"4" story).
    ``proba`` may pass precomputed probabilities for the whole split (the report reuses them).
    """
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ConfigError(f"--pair needs two different classes like 4,9; got {','.join(map(str, pair))}")
    a, b = int(pair[0]), int(pair[1])
    classes = len(dataset.class_names)
    for c in (a, b):
        if not 0 <= c < classes:
            raise ConfigError(f"class {c} is not in {dataset.name} (0..{classes - 1})")
    images, labels = dataset.split(split)
    labels = np.asarray(labels)
    if proba is None:
        proba = compute_activations(model, images, ["output"])["output"]
    of_a = np.flatnonzero(labels == a)
    if of_a.size == 0:
        raise ConfigError(f"no {split} image has label {a}")
    margin = proba[of_a, a] - proba[of_a, b]
    keep = proba[of_a].argmax(axis=1) == a if correct_only else np.ones(len(of_a), bool)
    order = np.argsort(margin, kind="stable")
    chosen = [int(of_a[k]) for k in order if keep[k]][:n]

    dense = layer if layer is not None else last_hidden_dense_layer(model)
    means: dict[int, np.ndarray] = {}
    std = None
    acts_chosen = None
    if dense is not None:
        model.check_layers(dense)
        by_class = {}
        for c in (a, b):
            of_c = images[labels == c]
            by_class[c] = compute_activations(model, of_c, [dense])[dense].reshape(len(of_c), -1)
        means = {c: v.mean(axis=0) for c, v in by_class.items() if len(v)}
        if b not in means:
            raise ConfigError(f"no {split} image has label {b}, so class {b} has no mean activation")
        var = np.concatenate([by_class[a] - means[a], by_class[b] - means[b]]).var(axis=0)
        std = np.sqrt(var)
        spread = np.maximum(std**2, 1e-6 * max(float(np.max(std**2)), 1e-12))
        acts_chosen = (
            compute_activations(model, images[chosen], [dense])[dense].reshape(len(chosen), -1)
            if chosen
            else None
        )
    cases = []
    for k, idx in enumerate(chosen):
        p = proba[idx]
        winner = a if p[a] >= p[b] else b
        loser = b if winner == a else a
        if acts_chosen is not None:
            h = acts_chosen[k]
            pull = (means[winner] - means[loser]) * (h - (means[winner] + means[loser]) / 2) / spread
        else:
            h, pull = np.zeros(0), np.zeros(0)
        gap = means[winner] - means[loser] if means else None
        cases.append(AmbiguousCase(idx, a, b, p, float(p[a] - p[b]), winner, h, pull, gap))
    return AmbiguousResult((a, b), dense, cases, means, std, images[chosen], split)
