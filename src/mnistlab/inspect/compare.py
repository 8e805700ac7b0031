"""What separates one set of images from another (the seed's 4s versus 9s).

Two views:

* **Positions and nodes** for a few chosen images (:func:`contrast_layer`): a unit (a position in
  a conv map, or a dense node) is *strongly active* in an image when its activation reaches
  ``rel`` times its map's largest value over all chosen images (for dense layers: the layer's
  largest value), and at least ``floor`` times the layer's largest value, so a nearly silent map
  does not count. *Red*: strongly active in every image of A and in no image of B. *Yellow*:
  strongly active in every image of A and in some image of B.
* **Maps and nodes over whole classes** (:func:`rank_units`): each map is scored by its mean
  activation (a node by its value) in every image of the two classes, and ranked by the area
  under the ROC curve (AUC: the probability that a random A image scores higher than a random B
  image; 1 or 0 separate perfectly, 0.5 not at all) and by the standardized mean difference
  (Cohen's d: difference of the means over the pooled standard deviation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset
from ..errors import ConfigError
from ..model_api import InspectableModel
from .activations import ImageSet, compute_activations, default_layers, select_images, unit_scores
from .tables import Column, Table


@dataclass
class LayerContrast:
    """Per-unit masks for one layer; unit shape is (C, H, W) for conv maps, (units,) for dense."""

    layer: str
    strong_a: np.ndarray  # (n_a, *unit_shape) bool
    strong_b: np.ndarray  # (n_b, *unit_shape) bool
    threshold: np.ndarray  # broadcastable to unit_shape

    @property
    def all_a(self) -> np.ndarray:
        return self.strong_a.all(axis=0)

    @property
    def red(self) -> np.ndarray:
        """Strongly active in all of A and none of B."""
        return self.all_a & ~self.strong_b.any(axis=0)

    @property
    def yellow(self) -> np.ndarray:
        """Strongly active in all of A and also in some of B."""
        return self.all_a & self.strong_b.any(axis=0)

    @property
    def is_conv(self) -> bool:
        return self.strong_a.ndim == 4

    def units_with(self, mask: np.ndarray) -> list[int]:
        """Maps (conv) or nodes (dense) holding at least one marked position, most marked first."""
        counts = mask.reshape(mask.shape[0], -1).sum(axis=1) if mask.ndim > 1 else mask.astype(int)
        order = np.argsort(-counts, kind="stable")
        return [int(u) for u in order if counts[u] > 0]


def contrast_layer(
    acts_a: np.ndarray, acts_b: np.ndarray, *, rel: float = 0.5, floor: float = 0.1, layer: str = ""
) -> LayerContrast:
    """Red/yellow masks for one layer from the activations of set A (n_a, ...) and set B (n_b, ...)."""
    acts_a, acts_b = np.asarray(acts_a, np.float32), np.asarray(acts_b, np.float32)
    if acts_a.shape[1:] != acts_b.shape[1:]:
        raise ConfigError(
            f"layer {layer!r}: sets A and B have different activation shapes {acts_a.shape[1:]} and "
            f"{acts_b.shape[1:]}"
        )
    if not 0 < rel <= 1:
        raise ConfigError(
            f"rel={rel} must be in (0, 1]: the share of a map's peak that counts as strongly active"
        )
    both = np.concatenate([acts_a, acts_b])
    layer_peak = float(both.max()) if both.size else 0.0
    if both.ndim == 4:
        map_peak = both.max(axis=(0, 2, 3))[:, None, None]  # (C, 1, 1)
        threshold = np.maximum(rel * map_peak, floor * layer_peak)
    else:
        threshold = np.full(both.shape[1:], rel * layer_peak, np.float32)
    # A unit that is zero everywhere is never "strong", whatever the threshold.
    threshold = np.maximum(threshold, np.finfo(np.float32).tiny)
    return LayerContrast(layer, acts_a >= threshold, acts_b >= threshold, threshold)


# ----- ranking over whole classes -----

def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N down each column, ties sharing their average rank (as in the Mann-Whitney U test)."""
    n, units = values.shape
    order = np.argsort(values, axis=0, kind="stable")
    sorted_vals = np.take_along_axis(values, order, axis=0)
    ranks = np.empty((n, units), np.float64)
    positions = np.arange(1, n + 1, dtype=np.float64)
    for u in range(units):
        col = sorted_vals[:, u]
        starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
        ends = np.r_[starts[1:], n]
        avg = (positions[starts] + positions[ends - 1]) / 2
        ranks[order[:, u], u] = np.repeat(avg, ends - starts)
    return ranks


def auc_scores(scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """Per unit: P(a random A image scores higher than a random B image) + half the ties."""
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    n_a, n_b = len(scores_a), len(scores_b)
    if n_a == 0 or n_b == 0:
        raise ConfigError("both sets need at least one image to rank units")
    ranks = _average_ranks(np.concatenate([scores_a, scores_b]))
    return (ranks[:n_a].sum(axis=0) - n_a * (n_a + 1) / 2) / (n_a * n_b)


def standardized_mean_difference(scores_a: np.ndarray, scores_b: np.ndarray) -> np.ndarray:
    """Cohen's d per unit; 0 where both sets are constant and equal."""
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    diff = a.mean(axis=0) - b.mean(axis=0)
    var_a = a.var(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
    var_b = b.var(axis=0, ddof=1) if len(b) > 1 else np.zeros(b.shape[1])
    sd = np.sqrt((var_a + var_b) / 2)
    return np.divide(diff, sd, out=np.where(diff == 0, 0.0, np.sign(diff) * 1e6), where=sd > 1e-12)


@dataclass
class UnitRanking:
    """Per-unit statistics of one layer over two sets of images (whole classes by default)."""

    layer: str
    auc: np.ndarray  # (units,)
    smd: np.ndarray  # (units,)
    mean_a: np.ndarray
    mean_b: np.ndarray
    n_a: int
    n_b: int
    kind: str = "map"  # "map" for conv/pool layers, "node" for dense

    def order(self) -> np.ndarray:
        """Most discriminative first: by |AUC - 0.5|, ties broken by |d|."""
        return np.lexsort((-np.abs(self.smd), -np.abs(self.auc - 0.5)))

    def top(self, k: int = 10) -> list[dict]:
        rows = []
        for u in self.order()[:k]:
            rows.append(
                {
                    "layer": self.layer, "kind": self.kind, "unit": int(u), "auc": float(self.auc[u]),
                    "smd": float(self.smd[u]), "mean_a": float(self.mean_a[u]),
                    "mean_b": float(self.mean_b[u]),
                    "favours": "A" if self.auc[u] > 0.5 else "B" if self.auc[u] < 0.5 else "-",
                }
            )
        return rows


def rank_units(acts_a: np.ndarray, acts_b: np.ndarray, layer: str = "") -> UnitRanking:
    """Rank a layer's maps (by mean activation) or nodes between two sets of images."""
    kind = "map" if np.asarray(acts_a).ndim == 4 else "node"
    a, b = unit_scores(acts_a), unit_scores(acts_b)
    return UnitRanking(
        layer, auc_scores(a, b), standardized_mean_difference(a, b), a.mean(axis=0), b.mean(axis=0), len(a),
        len(b), kind,
    )


# ----- the whole comparison -----

@dataclass
class Comparison:
    a: ImageSet
    b: ImageSet
    a_name: str
    b_name: str
    layers: list[str]
    acts_a: dict[str, np.ndarray] = field(repr=False)
    acts_b: dict[str, np.ndarray] = field(repr=False)
    contrasts: dict[str, LayerContrast] = field(repr=False)
    rankings: dict[str, UnitRanking] = field(default_factory=dict, repr=False)

    def table(self, k: int = 10) -> list[dict]:
        """The k most discriminative units of all ranked layers, with the chosen images' red/yellow counts."""
        rows = []
        for name, ranking in self.rankings.items():
            contrast = self.contrasts.get(name)
            red, yellow = (contrast.red, contrast.yellow) if contrast is not None else (None, None)
            for row in ranking.top(len(ranking.auc)):
                if contrast is not None:
                    u = row["unit"]
                    row["red"] = int(np.sum(red[u]))
                    row["yellow"] = int(np.sum(yellow[u]))
                rows.append(row)
        rows.sort(key=lambda r: (-abs(r["auc"] - 0.5), -abs(r["smd"])))
        return rows[:k]

    def summary(self) -> list[dict]:
        """Per layer: how many red and yellow positions/nodes, and in how many maps."""
        out = []
        for name in self.layers:
            c = self.contrasts[name]
            out.append({"layer": name, "red": int(c.red.sum()), "yellow": int(c.yellow.sum()),
                        "red_units": c.units_with(c.red), "yellow_units": c.units_with(c.yellow)})
        return out

    # The two tables the CLI prints, the report embeds and the web page shows: defined here once.

    def summary_table(self, max_units: int = 12) -> Table:
        """Per layer: red and yellow counts, and the maps/nodes with red (most red first)."""
        rows = []
        for row in self.summary():
            units = ", ".join(map(str, row["red_units"][:max_units]))
            rows.append(
                [
                    row["layer"], row["red"], row["yellow"],
                    units + (" ..." if len(row["red_units"]) > max_units else ""),
                ]
            )
        columns = [
            Column("layer"), Column("red"), Column("yellow"), Column("maps/nodes with red (most first)"),
        ]
        return Table(
            f"Positions or nodes marked red and yellow: {self.a_name} (A) vs {self.b_name} (B)", columns,
            rows,
            note="red: strongly active in every A image and no B image; "
            "yellow: in every A image and some B image",
        )

    def ranking_table(self, k: int = 10) -> Table:
        """The k most discriminative maps and nodes (:meth:`table`), with class names for A and B."""
        a, b = self.a_name, self.b_name
        rows = [
            [
                r["layer"], r["kind"], r["unit"], r["auc"], r["smd"], r["mean_a"], r["mean_b"],
                a if r["favours"] == "A" else b if r["favours"] == "B" else "-", r.get("red", ""),
                r.get("yellow", ""),
            ]
            for r in self.table(k)
        ]
        columns = [
            Column("layer"), Column("kind"), Column("unit"), Column("AUC", ".3f"), Column("d", "+.2f"),
            Column(f"mean {a}", ".4f"), Column(f"mean {b}", ".4f"), Column("favours"), Column("red"),
            Column("yellow"),
        ]
        sizes = next(iter(self.rankings.values()), None)
        counted = f" over {sizes.n_a} images of {a} and {sizes.n_b} of {b}" if sizes is not None else ""
        return Table(
            f"Most discriminative maps and nodes{counted}", columns, rows,
            note=f"AUC: the probability that a random {a} scores higher than a random {b} (a map by "
            "its mean activation); d: standardized mean difference; red, yellow: the chosen images' count",
        )


def compare_sets(
    model: InspectableModel,
    a: ImageSet,
    b: ImageSet,
    layers: Iterable[str] | str | None = None,
    *,
    a_name: str = "A",
    b_name: str = "B",
    rel: float = 0.5,
    floor: float = 0.1,
    rank_a: ImageSet | None = None,
    rank_b: ImageSet | None = None,
) -> Comparison:
    """Red/yellow units of chosen images A vs B, and (given ``rank_a``/``rank_b``) the ranking over
    those larger sets."""
    names = model.check_layers(layers) if layers is not None else default_layers(model)
    acts_a, acts_b = compute_activations(model, a, names), compute_activations(model, b, names)
    contrasts = {n: contrast_layer(acts_a[n], acts_b[n], rel=rel, floor=floor, layer=n) for n in names}
    rankings = {}
    if rank_a is not None and rank_b is not None:
        big_a, big_b = compute_activations(model, rank_a, names), compute_activations(model, rank_b, names)
        rankings = {n: rank_units(big_a[n], big_b[n], n) for n in names}
    return Comparison(a, b, a_name, b_name, names, acts_a, acts_b, contrasts, rankings)


def compare_classes(
    model: InspectableModel,
    dataset: Dataset,
    a_label: int,
    b_label: int,
    *,
    n: int = 3,
    a_indices: Sequence[int] | None = None,
    b_indices: Sequence[int] | None = None,
    layers: Iterable[str] | str | None = None,
    split: str = "test",
    rel: float = 0.5,
    floor: float = 0.1,
    rank_limit: int | None = None,
) -> Comparison:
    """The seed's 4s-versus-9s study: the first ``n`` images of each class (or chosen indices),
    and a ranking of maps and nodes over all images of the two classes in ``split``
    (at most ``rank_limit`` of each, first in order, for speed)."""
    a = (
        select_images(dataset, split, indices=a_indices)
        if a_indices
        else select_images(dataset, split, label=a_label, n=n)
    )
    b = (
        select_images(dataset, split, indices=b_indices)
        if b_indices
        else select_images(dataset, split, label=b_label, n=n)
    )
    rank_a = select_images(dataset, split, label=a_label, n=rank_limit)
    rank_b = select_images(dataset, split, label=b_label, n=rank_limit)
    names = dataset.class_names
    return compare_sets(model, a, b, layers, a_name=f"{names[a_label]}", b_name=f"{names[b_label]}", rel=rel,
                        floor=floor, rank_a=rank_a, rank_b=rank_b)
