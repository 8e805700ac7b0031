"""A short hypothesis fuzz of POST /api/predict: any body gets a JSON answer, never a crash."""

from __future__ import annotations

import base64
import json
import warnings

import pytest

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient  # noqa: E402

from test_web_helpers import tiny_app, write_tiny_run  # noqa: E402

numbers = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-10, 300, allow_nan=False),
    st.sampled_from([0, 255, 255.0, 1e308, -1e-9, 255.0000001]),
)
rows = st.lists(st.lists(numbers, min_size=0, max_size=40), min_size=0, max_size=40)
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
anything = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
b64 = st.binary(max_size=3000).map(lambda b: base64.b64encode(b).decode())
bodies = st.one_of(
    st.fixed_dictionaries(
        {"pixels": rows},
        optional={
            "drawing": st.booleans(),
            "layers": st.lists(st.sampled_from(["conv1", "dense1", "output", "x"]), max_size=3),
        },
    ),
    st.fixed_dictionaries(
        {"data": st.one_of(b64, st.text(max_size=50))},
        optional={"width": st.integers(-5, 3000), "height": st.integers(-5, 3000), "drawing": st.booleans()},
    ),
    st.dictionaries(
        st.sampled_from(["pixels", "data", "width", "height", "drawing", "layers", "extra"]), anything,
        max_size=5,
    ),
    anything,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-runs")
    write_tiny_run(root / "tiny")
    with TestClient(tiny_app(root), raise_server_exceptions=True) as c:
        yield c


@settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_predict_never_crashes(client, body):
    r = client.post(
        "/api/predict", params={"run": "tiny"}, content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (200, 400, 404, 413, 422), r.text
    answer = r.json()
    if r.status_code == 200:
        assert len(answer["probabilities"]) == 10
        assert abs(sum(answer["probabilities"]) - 1) < 1e-4
    else:
        assert set(answer) == {"error"} and answer["error"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=30))
def test_any_run_name_is_answered_in_json(client, name):
    r = client.get("/api/run", params={"run": name})
    assert r.status_code in (200, 400, 404), r.text
    assert r.status_code == 200 or "error" in r.json()
