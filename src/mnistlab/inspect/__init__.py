"""Model-agnostic analysis over mnistlab.model_api.InspectableModel: the same calls for the NumPy
MLP and the PyTorch CNN. Everything returns arrays and dataclasses; mnistlab.viz draws them.

>>> from mnistlab.inspect import load_run, select_images, compute_activations
>>> model, ds, manifest = load_run("runs/seed-cnn")
>>> chosen = select_images(ds, "test", indices=[1302])
>>> acts = compute_activations(model, chosen, ["conv3", "dense1"])    # {name: (N, ...)}
>>> cmp = compare_classes(model, ds, 4, 9, n=3)                       # red/yellow units, AUC ranking
>>> amb = find_ambiguous(model, ds, (4, 9))                           # 4s closest to 9
>>> oip = optimize_inputs(model, "conv3")                              # all maps as one batch
>>> att = attribute(model, ds.test_images[[4860]], "4,9", method="ig") # att.maps: pixels for 4 vs 9
>>> chk = cascading_randomization(model, ds.test_images[:20])         # chk.table(): Spearman per step
"""

from .activations import (
    ImageSet,
    compute_activations,
    image_set,
    layer_shapes,
    load_run,
    run_activations,
    select_images,
    unit_scores,
)
from .ambiguous import AmbiguousCase, AmbiguousResult, find_ambiguous
from .attribution import METHODS as ATTRIBUTION_METHODS
from .attribution import Attribution, attribute
from .compare import (
    Comparison,
    LayerContrast,
    UnitRanking,
    auc_scores,
    compare_classes,
    compare_sets,
    contrast_layer,
    rank_units,
    standardized_mean_difference,
)
from .confusions import Confusions, confusions
from .oip import OIPResult, multiscale_noise, optimize_inputs
from .report import build_report, write_report
from .sanity import SanityResult, cascading_randomization

__all__ = [
    "ATTRIBUTION_METHODS", "Attribution", "SanityResult", "attribute", "cascading_randomization",
    "AmbiguousCase", "AmbiguousResult", "Comparison", "Confusions", "ImageSet", "LayerContrast", "OIPResult",
    "UnitRanking", "auc_scores", "build_report", "compare_classes", "compare_sets", "compute_activations",
    "confusions", "contrast_layer", "find_ambiguous", "image_set", "layer_shapes", "load_run",
    "multiscale_noise", "optimize_inputs", "rank_units", "run_activations", "select_images",
    "standardized_mean_difference", "unit_scores", "write_report",
]
