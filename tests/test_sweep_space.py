"""The search-space language: what it accepts, what Optuna draws from it, and one line per bad term."""

from __future__ import annotations

import optuna
import pytest

from mnistlab.errors import ConfigError
from mnistlab.mlp.config import MLPConfig
from mnistlab.sweep.engines import CNNEngine, MLPEngine
from mnistlab.sweep.space import parse_space, trial_values

EXAMPLE = (
    "lr=log:0.01:1 l2=log:1e-5:1e-2 batch_size=int:100:1000:100 activation=choice:relu,tanh "
    "layers=choice:70,30|100,50"
)


def mlp_params():
    return MLPEngine().params(MLPConfig(val=1000))


def test_the_issue_example_parses_into_typed_dimensions():
    dims = {d.name: d for d in parse_space(EXAMPLE, mlp_params())}
    assert (dims["lr"].kind, dims["lr"].low, dims["lr"].high) == ("log", 0.01, 1.0)
    assert (dims["batch_size"].kind, dims["batch_size"].step) == ("int", 100.0)
    assert dims["activation"].choices == ("relu", "tanh")
    assert dims["layers"].choices == (
        "70,30",
        "100,50",
    )  # Optuna keeps scalars; turned back into tuples per trial


def test_drawn_values_respect_bounds_and_build_valid_configs():
    engine, params = MLPEngine(), mlp_params()
    dims = parse_space(EXAMPLE + "\n# a comment line\nmomentum=float:0.5:0.95  epochs=logint:2:40", params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        trial = study.ask()
        values = trial_values(dims, params, {d.name: d.suggest(trial) for d in dims})
        assert (
            0.01 <= values["lr"] <= 1 and 1e-5 <= values["l2"] <= 1e-2 and 0.5 <= values["momentum"] <= 0.95
        )
        assert values["batch_size"] in range(100, 1001, 100) and 2 <= values["epochs"] <= 40
        assert values["layers"] in ((70, 30), (100, 50))
        config = engine.configure(MLPConfig(val=1000), values)
        assert config.hidden == values["layers"] and config.activation == values["activation"]
        study.tell(trial, 0.5)


@pytest.mark.parametrize(
    ("term", "says"),
    [
        ("units=int:1:5", "unknown parameter 'units'"),
        ("lr=gauss:0:1", "unknown kind 'gauss'"),
        ("lr=log:1:0.1", "low bound must be below"),
        ("lr=log:0:1", "log scale needs a low bound above 0"),
        ("lr=float:a:1", "bounds must be numbers"),
        ("batch_size=int:10.5:20", "bounds must be integers"),
        ("batch_size=float:10:20", "is an integer"),
        ("lr=int:1:5", "is a real number"),
        ("activation=choice:relu,swish", "unknown activation 'swish'"),
        ("activation=float:0:1", "takes a list of values"),
        ("layers=choice:70,x|10", "list like 70,30"),
        ("layers=choice:0,3|10", "hidden layer size must be a positive integer"),
        ("lr=0.1", "expected NAME=KIND:ARGS"),
        ("lr=log:0.1", "expected lr=log:LO:HI"),
        ("batch_size=int:1:10:0", "step must be above 0"),
        ("lr=choice:0.1,0.1", "appears twice"),
        ("lr=float:-1:1", "learning rate must be > 0"),
    ],
)
def test_a_bad_term_gets_one_line_naming_it(term, says):
    with pytest.raises(ConfigError) as err:
        parse_space(f"l2=log:1e-5:1e-2 {term} activation=choice:relu,tanh", mlp_params())
    message = str(err.value)
    assert f"{term!r}" in message and says in message and "\n" not in message


def test_a_repeated_name_or_an_empty_space_is_refused():
    with pytest.raises(ConfigError, match="appears twice"):
        parse_space("lr=log:0.1:1 lr=float:0.1:1", mlp_params())
    with pytest.raises(ConfigError, match="empty"):
        parse_space("  # nothing\n", mlp_params())


def test_each_engine_default_space_parses():
    from mnistlab.cnn.training import resolve_config

    assert len(parse_space(MLPEngine.default_space, mlp_params())) == 5
    cnn = CNNEngine()
    dims = parse_space(
        CNNEngine.default_space + " spec=choice:seed|conv:4:3,flatten,output:10",
        cnn.params(resolve_config("seed", val=1000)),
    )
    assert {d.name for d in dims} == {"lr", "batch_size", "weight_decay", "optimizer", "spec"}
    with pytest.raises(ConfigError, match="'optimizer=choice:adam,lion'.*unknown optimizer 'lion'"):
        parse_space("optimizer=choice:adam,lion", cnn.params(resolve_config("seed", val=1000)))
    with pytest.raises(ConfigError, match="'spec=choice:seed|conv:4:x'"):
        parse_space("spec=choice:seed|conv:4:x", cnn.params(resolve_config("seed", val=1000)))
