"""A missing optional module is one line naming the extra, for every command and API entry point.

Every CLI command runs in a subprocess whose imports pass through tests/import_blocker (a
sitecustomize on PYTHONPATH that puts a finder first on sys.meta_path). A first run records which
optional modules the command imports; then the command runs once with each of them made
unimportable. Blocking a module that a command never imports cannot change what it does, so those
pairs are the ones that can fail.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

import mnistlab
from mnistlab.errors import MissingExtra, MnistlabError
from mnistlab.extras import EXTRAS, missing_extra, needs_extras, require

ROOT = Path(__file__).resolve().parents[1]
BLOCKER = Path(__file__).resolve().parent / "import_blocker"
TEST_ONLY = ("captum",)  # optional for the tests, never for a command
KERAS_FILE = Path(__file__).resolve().parent / "fixtures" / "keras" / "dense_mlp.keras"
TINY_CNN = "conv:4:3,pool:2,flatten,dense:8,output:10"


def _pyproject_extras() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    return {name: deps for name, deps in extras.items() if name not in ("dev", "all")}


def _distribution(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower()


# imported directly, installed as a dependency of that distribution
BROUGHT_BY = {"pydantic": "fastapi", "starlette": "fastapi", "google": "onnx", "sqlalchemy": "optuna"}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules outside the standard library that mnistlab's sources import -> the files."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "mnistlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            outside = {name.partition(".")[0] for name in names} - set(sys.stdlib_module_names)
            for top in outside - {"mnistlab"}:
                found.setdefault(top, set()).add(path.name)
    return found


def test_every_import_is_a_dependency_or_an_extra_in_the_table():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    core = {_distribution(d) for d in project["dependencies"]}
    extras = _pyproject_extras()
    for module, files in _third_party_imports().items():
        if module.lower() in core:
            continue
        assert module in EXTRAS, f"{sorted(files)} import {module}: add it to EXTRAS (mnistlab/extras.py)"
        extra = EXTRAS[module]
        assert extra in extras, f"{module} is imported, but pyproject.toml has no extra [{extra}]"
        installs = {_distribution(d) for d in extras[extra]}
        assert BROUGHT_BY.get(module, module).lower() in installs, f"[{extra}] does not install {module}"
        assert extra in " ".join(project["optional-dependencies"]["all"]), f"[all] must include [{extra}]"


def test_every_extra_in_pyproject_has_its_modules_in_the_table():
    for extra, deps in _pyproject_extras().items():
        modules = {m.lower() for m, e in EXTRAS.items() if e == extra}
        assert modules & {_distribution(d) for d in deps}, f"extra [{extra}] has no module in EXTRAS"


def test_require_and_needs_extras_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # None in sys.modules: import raises ModuleNotFoundError
    with pytest.raises(MissingExtra) as info:
        require("optuna", "mnistlab sweep")
    assert str(info.value) == "mnistlab sweep needs optuna; install it with pip install 'mnistlab[sweep]'"
    assert isinstance(info.value, ModuleNotFoundError) and isinstance(info.value, MnistlabError)
    with pytest.raises(
        MissingExtra, match=r"the web page needs fastapi; install it with pip install 'mnistlab\[web\]'"
    ), needs_extras("the web page"):
        raise ModuleNotFoundError("No module named 'fastapi.responses'", name="fastapi.responses")
    # not an optional module: a real bug, left as it is
    with pytest.raises(ModuleNotFoundError) as info, needs_extras("x"):
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")
    assert not isinstance(info.value, MissingExtra)
    assert (
        str(missing_extra("torch.nn", "a CNN"))
        == "a CNN needs torch; install it with pip install 'mnistlab[cnn]'"
    )


def test_api_entry_points_raise_missing_extra_without_torch(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from mnistlab.cnn import train
    from mnistlab.data import Dataset
    from mnistlab.models import load_model

    rng = np.random.default_rng(0)
    ds = Dataset(
        "mnist",
        rng.integers(0, 255, (64, 28, 28), dtype=np.uint8),
        np.arange(64, dtype=np.uint8) % 10,
        rng.integers(0, 255, (20, 28, 28), dtype=np.uint8),
        np.arange(20, dtype=np.uint8) % 10,
        tuple("0123456789"),
    )
    train(ds, out=tmp_path / "cnn", spec=TINY_CNN, epochs=1, batch_size=32, amp="off", progress=False)
    for name in ("mnistlab.cnn.model", "mnistlab.cnn.optim", "mnistlab.cnn.training"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # what an environment without torch looks like to import
    with pytest.raises(
        MissingExtra,
        match=rf"the CNN run {tmp_path / 'cnn'} needs torch; install it with pip install 'mnistlab\[cnn\]'",
    ):
        load_model(tmp_path / "cnn")
    import mnistlab.cnn

    with pytest.raises(MissingExtra, match=r"mnistlab.cnn.Trainer needs torch; .*'mnistlab\[cnn\]'"):
        mnistlab.cnn.Trainer  # noqa: B018
    assert mnistlab.cnn.parse_spec(TINY_CNN)  # the spec part needs no torch


# ----- every CLI command, each optional module blocked in turn -----

# Two groups, each run in its own interpreter: what needs no optional module, then what does. Within a
# group, a command's imports are recorded exactly for modules no earlier command imported (a second
# import of a module is answered from sys.modules); serve goes last so only it meets the web modules.
RUN_COMMANDS = {  # on each kind of run: {run}, {kind} and {layer} are filled in
    "evaluate": "evaluate {run} --out figures-{kind}",
    "predict": "predict {run} --index 0,1",
    "layers": "layers {run}",
    "show-activations": "show-activations {run} --index 0 --layer {layer} --out act-{kind}.png",
    "compare": "compare {run} --a label=4 --b label=9 --layer {layer} --top 3 --out figures-{kind}",
    "ambiguous": "ambiguous {run} --n 2 --out amb-{kind}.png",
    "confusions": "confusions {run} --top 1 --per-pair 2 --out figures-{kind}",
    "oip": "oip {run} --steps 2 --maps 0-1 --out oip-{kind}.png",
    "report": "report {run} --oip-steps 2 --out report-{kind}.html",
    "attribute": "attribute {run} --index 0 --out attr-{kind}.png",
}
LAYER = {"mlp": "hidden1", "cnn": "dense1"}
GROUPS = {
    "without optional modules": {
        "data fetch": "data fetch",
        "data info": "data info",
        "data show": "data show --index 0 --out show.png",
        "data verify": "data verify",
        "train mlp": "train mlp --layers 8 --epochs 1 --val 100 --threads 1 --no-progress --out new-mlp",
        "summary --spec": "summary --spec seed",
        **{f"{name} (mlp run)": argv for name, argv in RUN_COMMANDS.items()},
    },
    "with optional modules": {
        "train cnn": f"train cnn --spec {TINY_CNN} --epochs 1 --val 100 --batch-size 50 --threads 1 "
        "--amp off --no-progress --out new-cnn",
        "summary": "summary {run}",
        **{f"{name} (cnn run)": argv for name, argv in RUN_COMMANDS.items()},
        "export (mlp run)": "export {run} --out model-{kind}.onnx",
        "export (cnn run)": "export {run} --out model-{kind}.onnx",
        "import onnx": "import onnx {root}/model.onnx --out imported-onnx",
        "import keras": f"import keras {KERAS_FILE} --out imported-keras",
        "sweep mlp": "sweep mlp --study s --trials 1 --epochs 1 --val 100 --threads 1 --runs sweeps",
        "sweep cnn": f"sweep cnn --study c --trials 1 --epochs 1 --val 100 --spec {TINY_CNN} --threads 1 "
        "--runs sweeps",
        "sweep show": "sweep show s --runs sweeps --no-test",
        "serve": "serve --runs . --port 70000",  # imports all it needs, then refuses the port
        "train mlp --tensorboard": "train mlp --layers 8 --epochs 1 --val 100 --threads 1 --no-progress "
        "--out tb-mlp --tensorboard tb",
        "tensorboard": "tensorboard tb --port 70000",  # imports all it needs, then refuses the port
    },
}
EXPECTED_FAILURE = {
    "serve": "--port 70000 must be between 0 and 65535",
    "tensorboard": "--port 70000 must be between 0 and 65535",
}


def test_the_command_list_covers_every_cli_command():
    from mnistlab.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(getattr(action, "choices", None), dict):
                for name, sub in action.choices.items():
                    nested = any(isinstance(getattr(a, "choices", None), dict) for a in sub._actions)
                    yield from (
                        walk(sub, f"{prefix} {name}".strip()) if nested else [f"{prefix} {name}".strip()]
                    )

    words = [argv.split()[:2] for group in GROUPS.values() for argv in group.values()]
    listed = {w[0] for w in words} | {" ".join(x for x in w if not x.startswith(("-", "{"))) for w in words}
    missing = set(walk(build_parser(), "")) - listed
    assert not missing, f"add these commands to GROUPS: {sorted(missing)}"


@pytest.fixture
def small_world(tmp_path, monkeypatch):
    """A small dataset registered and cached as mnist, and an MLP and a CNN run trained on it."""
    pytest.importorskip("torch")
    from conftest import synthetic_arrays
    from mnistlab.cnn import train
    from mnistlab.data import load_dataset, sources
    from mnistlab.export_onnx import export_run
    from mnistlab.mlp.config import preset
    from mnistlab.mlp.run import train_on_dataset

    arrays = synthetic_arrays(300, 100)
    checksums = sources.array_checksums(arrays)
    monkeypatch.setitem(
        sources.DATASETS, "mnist", sources.DatasetInfo("mnist", tuple("0123456789"), checksums, ())
    )
    sources.write_cache(sources.cache_path("mnist"), arrays, "the test's synthetic arrays")
    ds = load_dataset("mnist")
    train_on_dataset(preset("default", hidden=(12,), epochs=1), ds, out=tmp_path / "mlp", threads=1)
    train(
        ds, out=tmp_path / "cnn", spec=TINY_CNN, epochs=1, batch_size=50, amp="off", threads=1, progress=False
    )
    export_run(tmp_path / "mlp", tmp_path / "model.onnx")  # for `import onnx`, whatever ran before it
    return tmp_path, checksums


def _commands(group: str, runs: Path) -> list[tuple[str, list[str]]]:
    def fill(name: str, argv: str) -> list[str]:
        kind = "cnn" if "cnn run" in name or name == "summary" else "mlp"
        fields = {"{run}": str(runs / kind), "{root}": str(runs), "{kind}": kind, "{layer}": LAYER[kind]}
        filled = []
        for arg in argv.split():
            for key, value in fields.items():
                arg = arg.replace(key, value)
            filled.append(arg)
        return filled

    return [(name, fill(name, argv)) for name, argv in GROUPS[group].items()]


def _run_all(commands, where: Path, checksums, block: str = "") -> tuple[list[dict], list[str]]:
    """All commands one after another in one fresh interpreter with ``block`` unimportable."""
    import json

    where.mkdir()
    (where / "commands.json").write_text(json.dumps([argv for _, argv in commands]))
    log = where / "imports.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(BLOCKER), str(Path(mnistlab.__file__).parents[1])]),
        "MNISTLAB_TEST_BLOCK": block,
        "MNISTLAB_TEST_WATCH": ",".join([*EXTRAS, *TEST_ONLY]),
        "MNISTLAB_TEST_IMPORT_LOG": str(log),
        "MNISTLAB_TEST_MNIST_SHA256": json.dumps(checksums),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        [sys.executable, str(BLOCKER / "run_commands.py"), "commands.json", "results.json"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    imported = log.read_text().split("--\n") if log.exists() else []
    return json.loads((where / "results.json").read_text()), [set(chunk.split()) for chunk in imported]


def _last_line(result: dict) -> str:
    return (result["stderr"].strip().splitlines() or [""])[-1]


def _ends_well(result: dict, extra: str | None = None) -> str | None:
    """None when the command ended in exit 0 or one clean error line (naming ``extra``), else the problem."""
    err = result["stderr"].strip()
    if result["code"] == 0:
        return None
    if result["code"] != 1 or "Traceback" in err or "internal error" in err:
        return f"exit {result['code']}: {err}"
    last = err.splitlines()[-1]
    if not last.startswith("mnistlab: error: "):
        return f"not one error line: {err}"
    if extra is not None and f"install it with pip install 'mnistlab[{extra}]'" not in last:
        return f"does not name the [{extra}] extra: {last}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS)
def test_every_command_without_each_optional_module(group, small_world):
    """First with nothing blocked, recording which optional modules get imported; then once per
    imported module with it blocked: exit 0 or one line naming its extra, never a traceback."""
    root, checksums = small_world
    commands = _commands(group, root)
    results, imported = _run_all(commands, root / "nothing-blocked", checksums)
    for (name, _), result in zip(commands, results):
        problem = _ends_well(result)
        assert problem is None, f"{name}: {problem}"
        expected = EXPECTED_FAILURE.get(name)
        assert (expected in result["stderr"]) if expected else result["code"] == 0, (
            f"{name}: {result['stderr']}"
        )
    before: set[str] = set()
    may_import = []  # per command: the modules it imports, or may import unseen because an earlier one did
    for mods in imported[: len(commands)]:
        may_import.append(mods | before)
        before |= mods
    if group == "without optional modules":
        assert not before, f"commands that need no optional module imported {before}"
        return
    assert {"torch", "fastapi", "uvicorn"} <= before, before
    checked: dict[str, int] = {}
    for module in sorted(before):
        chosen = [(c, r) for c, r, mods in zip(commands, results, may_import) if module in mods]
        blocked, _ = _run_all([c for c, _ in chosen], root / f"without-{module}", checksums, block=module)
        for ((name, _), unblocked), result in zip(chosen, blocked):
            changed = (result["code"], _last_line(result)) != (unblocked["code"], _last_line(unblocked))
            problem = _ends_well(result, EXTRAS.get(module) if changed else None)
            assert problem is None, f"{name} without {module}: {problem}"
            checked[module] = checked.get(module, 0) + changed
    print(f"fault points: {checked} commands ended in the extra's one-line error")
    assert checked["torch"] >= len(RUN_COMMANDS) + 1 and checked["fastapi"] + checked["uvicorn"] >= 1
