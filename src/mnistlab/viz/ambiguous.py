"""The ambiguous-image figure (mnistlab.inspect.ambiguous): one row per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from . import matplotlib  # noqa: F401  (selects the Agg backend)

A_COLOR, B_COLOR = "#c0392b", "#2c7fb8"


def plot_ambiguous(result, class_names: Sequence[str] | None = None, *, top: int = 5) -> Figure:
    """Per image: the digit, its class probabilities, and its dense-layer activations against the two
    class means, nodes ordered from most typical of the first class to most typical of the second,
    the ``top`` nodes that pulled it toward the winner marked with their index."""
    a, b = result.pair
    cases = result.cases
    names = [str(c) for c in (class_names or range(len(cases[0].proba) if cases else 10))]
    n = max(1, len(cases))
    has_dense = result.layer is not None and bool(result.class_means)
    ncols = 3 if has_dense else 2
    fig = Figure(figsize=(13 if has_dense else 6, 2.1 * n + 0.6))
    axes = fig.subplots(n, ncols, squeeze=False, gridspec_kw={"width_ratios": [1, 2.2, 7][:ncols]})
    if not cases:
        for ax in axes.flat:
            ax.set_axis_off()
        axes[0, 0].text(0, 0.5, f"no test image of {names[a]}", fontsize=10)
        return fig
    if has_dense:
        diff = result.class_means[a] - result.class_means[b]
        order = np.argsort(-diff, kind="stable")  # nodes typical of a on the left, of b on the right
        # Nodes silent for both classes and for every image shown carry no story: leave them out.
        peak_all = np.maximum(np.maximum(result.class_means[a], result.class_means[b]),
                              np.max([c.activation for c in cases], axis=0))
        order = order[peak_all[order] > 1e-3 * max(float(peak_all.max()), 1e-12)]
    for r, case in enumerate(cases):
        ax = axes[r, 0]
        ax.imshow(result.images[r], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        verdict = "correct" if case.predicted == case.label else f"predicted {names[case.predicted]}"
        ax.set_title(f"#{case.index}: {names[a]}, {verdict}", fontsize=8)

        ax = axes[r, 1]
        colors = ["#bbbbbb"] * len(case.proba)
        colors[a], colors[b] = A_COLOR, B_COLOR
        ax.bar(range(len(case.proba)), case.proba, color=colors)
        ax.set_ylim(0, 1.05)
        ax.set_xticks(
            range(len(case.proba)), names if max(map(len, names)) <= 2 else range(len(case.proba)), fontsize=7
        )
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"p({names[a]}) = {case.proba[a]:.3f}, p({names[b]}) = {case.proba[b]:.3f}", fontsize=8)

        if has_dense:
            ax = axes[r, 2]
            x = np.arange(len(order))
            ax.bar(x, case.activation[order], color="#555555", width=0.8, label=f"#{case.index}")
            ax.plot(
                x, result.class_means[a][order], color=A_COLOR, linewidth=1.2, label=f"mean of {names[a]}s"
            )
            ax.plot(
                x, result.class_means[b][order], color=B_COLOR, linewidth=1.2, label=f"mean of {names[b]}s"
            )
            where = {int(node): pos for pos, node in enumerate(order)}
            pulls = [node for node in case.top_pull(top) if node in where]
            peak = max(float(np.max(case.activation)) if case.activation.size else 1.0,
                       float(np.max(result.class_means[a])), float(np.max(result.class_means[b])), 1e-6)
            for node in pulls:
                pos = where[node]
                ax.annotate(
                    str(node), (pos, case.activation[node]), xytext=(0, 6), textcoords="offset points",
                    ha="center", fontsize=7, color=A_COLOR if case.winner == a else B_COLOR,
                    fontweight="bold",
                )
            ax.set_ylim(0, peak * 1.2)
            ax.set_xlim(-1, len(order))
            ax.set_xticks([])
            ax.tick_params(axis="y", labelsize=7)
            winner = names[case.winner]
            ax.set_title(
                f"{result.layer}: {len(order)} active nodes, most '{names[a]}' left, most '{names[b]}' "
                f"right; numbered: top nodes pulling toward {winner} "
                f"({', '.join(map(str, pulls)) or 'none'})",
                fontsize=8,
            )
            if r == 0:
                ax.legend(fontsize=7, loc="upper center", ncols=3)
    fig.suptitle(
        f"{names[a]}s closest to {names[b]} (smallest p({names[a]}) - p({names[b]}), {result.split} split)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig
