"""agent.control.tflite_writer: models written without TensorFlow load in ai_edge_litert and
compute the numpy forward pass to 1e-5."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from agent.control.mlp import Mlp
from agent.control.policy import CARD_FORMAT, Policy, load_interpreter
from agent.control.tflite_writer import WriterError, mlp_to_tflite, write_mlp

TOL = 1e-5


def _numpy_forward(layers: list, x: np.ndarray) -> np.ndarray:
    """float64 reference with the float32-rounded weights the file holds."""
    h = x.astype(np.float64)
    for w, b, act in layers:
        h = h @ np.float32(w).astype(np.float64) + np.float32(b).astype(np.float64)
        if act == "tanh":
            h = np.tanh(h)
        elif act == "relu":
            h = np.maximum(h, 0.0)
    return h


def _random_layers(sizes: list[int], acts: list, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0, 1.5 / np.sqrt(a), (a, b)), rng.normal(0, 0.3, b), act)
        for (a, b), act in zip(itertools.pairwise(sizes), acts, strict=True)
    ]


def _max_error(path: Path, layers: list, n_in: int, n_out: int, seed: int) -> float:
    interp = load_interpreter(path)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    assert len(ins) == len(outs) == 1
    assert list(ins[0]["shape"]) == [1, n_in] and ins[0]["dtype"] == np.float32
    assert list(outs[0]["shape"]) == [1, n_out] and outs[0]["dtype"] == np.float32
    rng = np.random.default_rng(seed)
    xs = rng.normal(0, 2.0, (200, n_in)).astype(np.float32)
    got = np.empty((200, n_out))
    for i, x in enumerate(xs):
        interp.set_tensor(ins[0]["index"], x[None, :])
        interp.invoke()
        got[i] = interp.get_tensor(outs[0]["index"])[0]
    want = _numpy_forward(layers, xs)
    assert np.abs(want).max() > 0.1  # the check below is not comparing zeros
    return float(np.abs(got - want).max())


@pytest.mark.parametrize(
    ("sizes", "acts"),
    [
        ([40, 64, 64, 1], ["tanh", "tanh", None]),  # the heater policy's shape
        ([3, 5, 2], ["relu", "linear"]),
        ([7, 16, 8, 4, 3], ["relu", "tanh", "relu", "none"]),
        ([1, 1], ["tanh"]),  # a single layer with an activation on the output
        ([6, 3], [None]),  # plain linear map
        ([12, 32, 1], ["tanh", "relu"]),
    ],
)
def test_round_trip_matches_numpy(tmp_path: Path, sizes: list[int], acts: list) -> None:
    layers = _random_layers(sizes, acts, seed=len(sizes) * 10 + sizes[0])
    path = write_mlp(tmp_path / "m.tflite", layers)
    assert not path.with_name("m.tflite.tmp").exists()
    err = _max_error(path, layers, sizes[0], sizes[-1], seed=sizes[-1])
    assert err <= TOL, err


def test_mlp_export_matches_its_own_forward(tmp_path: Path) -> None:
    m = Mlp.create([10, 24, 24, 2], "tanh", "linear", seed=5)
    m.params += np.random.default_rng(1).normal(0, 0.05, m.n_params).astype(np.float32)
    path = tmp_path / "mlp.tflite"
    path.write_bytes(m.to_tflite())
    interp = load_interpreter(path)
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    xs = np.random.default_rng(2).normal(size=(50, 10)).astype(np.float32)
    for x in xs:
        interp.set_tensor(i, x[None, :])
        interp.invoke()
        np.testing.assert_allclose(interp.get_tensor(o)[0], m.forward(x), atol=TOL)


def test_written_bytes_are_deterministic_and_small() -> None:
    layers = _random_layers([40, 64, 64, 1], ["tanh", "tanh", None], seed=0)
    a, b = mlp_to_tflite(layers), mlp_to_tflite(layers)
    assert a == b and a[4:8] == b"TFL3"
    n_params = 40 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    assert n_params * 4 < len(a) < n_params * 4 + 4096


def test_policy_loads_a_written_model_with_its_card(tmp_path: Path) -> None:
    """The runtime's `Policy` takes a written model: shapes checked, scaling from the card."""
    n = 4  # setpoint, error now and 1 period ago, last applied output
    layers = _random_layers([n, 8, 1], ["tanh", None], seed=3)
    path = write_mlp(tmp_path / "toy.tflite", layers, input_name="features", output_name="u")
    mean, std = [50.0, 0.0, 0.0, 40.0], [10.0, 2.0, 2.0, 20.0]
    card = {
        "format": CARD_FORMAT,
        "name": "toy",
        "period_ms": 500,
        "signals": ["pv"],
        "features": [
            {"name": "sp", "source": "setpoint", "signal": None, "lag": 0},
            {"name": "err", "source": "error", "signal": None, "lag": 0},
            {"name": "err_l1", "source": "error", "signal": None, "lag": 1},
            {"name": "u_l1", "source": "output", "signal": None, "lag": 1},
        ],
        "input": {"shape": [1, n], "dtype": "float32", "mean": mean, "std": std},
        "output": {"scale": 100.0, "offset": 5.0, "min": 0.0, "max": 100.0},
    }
    path.with_suffix(".json").write_text(json.dumps(card))
    pol = Policy(path, signals=["pv"], period_ms=500)
    fs = pol.new_state()
    fs.push_inputs(60.0, 57.0, [57.0])
    fs.push_output(30.0)
    fs.push_inputs(60.0, 58.5, [58.5])
    raw = np.array([60.0, 1.5, 3.0, 30.0])
    x = (raw - np.array(mean)) / np.array(std)
    want = _numpy_forward(layers, x[None, :])[0, 0] * 100.0 + 5.0
    assert pol.invoke(fs) == pytest.approx(want, abs=100.0 * TOL)


def test_policy_refuses_a_written_model_of_the_wrong_width(tmp_path: Path) -> None:
    from agent.control.policy import ModelError

    path = write_mlp(tmp_path / "w.tflite", _random_layers([3, 4, 1], ["tanh", None], 1))
    card = {
        "format": CARD_FORMAT,
        "period_ms": 500,
        "signals": ["pv"],
        "features": [{"name": "sp", "source": "setpoint", "lag": 0}],
        "input": {"mean": [0.0], "std": [1.0]},
        "output": {"scale": 1.0, "offset": 0.0, "min": 0.0, "max": 1.0},
    }
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"input tensor is .*card says \[1, 1\]"):
        Policy(path, signals=["pv"], period_ms=500)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([], "at least one layer"),
        ([(np.zeros((3, 2)), np.zeros(2), "sigmoid")], "not supported"),
        ([(np.zeros((3, 2)), np.zeros(3), None)], "not \\(n_in, n_out\\)"),
        (
            [(np.zeros((3, 2)), np.zeros(2), "tanh"), (np.zeros((4, 1)), np.zeros(1), None)],
            "takes 4 inputs, previous gives 2",
        ),
        ([(np.full((2, 2), np.nan), np.zeros(2), None)], "not finite"),
    ],
)
def test_bad_layers_are_refused(layers: list, match: str) -> None:
    with pytest.raises(WriterError, match=match):
        mlp_to_tflite(layers)
