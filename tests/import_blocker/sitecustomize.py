"""Loaded by Python at startup when this directory is on PYTHONPATH (tests/test_extras.py puts it there).

MNISTLAB_TEST_BLOCK: comma-separated top-level modules made unimportable, as if not installed.
MNISTLAB_TEST_IMPORT_LOG: a file that gets one line per first import of a MNISTLAB_TEST_WATCH module.
"""

import os
import sys

_BLOCKED = set(filter(None, os.environ.get("MNISTLAB_TEST_BLOCK", "").split(",")))
_WATCHED = set(filter(None, os.environ.get("MNISTLAB_TEST_WATCH", "").split(",")))
_LOG = os.environ.get("MNISTLAB_TEST_IMPORT_LOG")


class _ImportBlocker:
    """First on sys.meta_path: sees every import not already in sys.modules."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if _LOG and top in _WATCHED and top == name:
            with open(_LOG, "a") as log:
                log.write(top + "\n")
        if top in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if _BLOCKED or _LOG:
    sys.meta_path.insert(0, _ImportBlocker())

# A small dataset stands in for MNIST: the test wrote its cache and passes its checksums.
if os.environ.get("MNISTLAB_TEST_MNIST_SHA256"):
    import dataclasses
    import json

    from mnistlab.data import sources

    sources.DATASETS["mnist"] = dataclasses.replace(
        sources.DATASETS["mnist"], sha256=json.loads(os.environ["MNISTLAB_TEST_MNIST_SHA256"]), mirrors=()
    )
