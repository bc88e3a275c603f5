"""agent.control.mlp: backprop against finite differences, Adam, fit, early stopping, DAgger."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.control.mlp import (
    Adam,
    Mlp,
    Student,
    TrainConfig,
    dagger,
    episode_seed,
    fit,
)


def _ref_loss(m: Mlp, p: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """MSE of the network with flat parameters `p`, in float64, written independently."""
    o, h = 0, x.astype(np.float64)
    for (a, b), act in zip(m._shapes, m.activations, strict=True):
        w = p[o : o + a * b].reshape(a, b)
        o += a * b
        h = h @ w + p[o : o + b]
        o += b
        h = np.tanh(h) if act == "tanh" else np.maximum(h, 0) if act == "relu" else h
    return float(np.mean((h - y) ** 2))


@pytest.mark.parametrize(
    ("sizes", "acts"),
    [
        ((5, 7, 3), ("tanh", "linear")),
        ((4, 6, 6, 1), ("relu", "tanh", "linear")),
        ((3, 2), ("linear",)),
    ],
)
def test_gradient_matches_finite_differences(sizes: tuple, acts: tuple) -> None:
    rng = np.random.default_rng(1)
    m = Mlp(sizes, acts, rng.normal(0, 0.5, Mlp(sizes, acts).n_params).astype(np.float32))
    x = rng.normal(size=(32, sizes[0])).astype(np.float32)
    y = rng.normal(size=(32, sizes[-1])).astype(np.float32)
    grad = np.zeros(m.n_params, np.float32)
    loss = m.loss_and_grad(x, y, grad)
    p64 = m.params.astype(np.float64)
    assert loss == pytest.approx(_ref_loss(m, p64, x, y), rel=1e-5)
    eps = 1e-5
    for _ in range(8):  # directional derivatives along random directions
        v = rng.normal(size=m.n_params)
        num = (_ref_loss(m, p64 + eps * v, x, y) - _ref_loss(m, p64 - eps * v, x, y)) / (2 * eps)
        assert float(grad @ v) == pytest.approx(num, rel=1e-3, abs=1e-6)
    for i in range(0, m.n_params, max(1, m.n_params // 10)):  # and single coordinates
        e = np.zeros(m.n_params)
        e[i] = eps
        num = (_ref_loss(m, p64 + e, x, y) - _ref_loss(m, p64 - e, x, y)) / (2 * eps)
        assert grad[i] == pytest.approx(num, rel=1e-3, abs=1e-6)


def test_forward_one_row_and_batch_agree_and_views_share_params() -> None:
    m = Mlp.create([3, 8, 2], seed=4)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    out = m.forward(x)
    assert out.shape == (5, 2)
    np.testing.assert_allclose(m.forward(x[2]), out[2], rtol=1e-6)
    m.params[:] = 0.0  # weights are views of the flat vector
    assert not m.weights[0].any() and not m.forward(x).any()


def test_create_is_seeded_and_glorot_bounded() -> None:
    a, b, c = (
        Mlp.create([10, 20, 1], seed=3),
        Mlp.create([10, 20, 1], seed=3),
        Mlp.create([10, 20, 1], seed=4),
    )
    assert np.array_equal(a.params, b.params) and not np.array_equal(a.params, c.params)
    assert np.abs(a.weights[0]).max() <= math.sqrt(6 / 30) and not a.biases[0].any()


def test_adam_minimises_a_quadratic() -> None:
    target = np.array([1.0, -2.0, 3.0], np.float32)
    p = np.zeros(3, np.float32)
    opt = Adam(3)
    for _ in range(2000):
        opt.step(p, 2 * (p - target), 0.01)
    np.testing.assert_allclose(p, target, atol=1e-2)


def _regression(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.tanh(x[:, 0] - 0.5 * x[:, 1]) + 0.3 * x[:, 2] * x[:, 3]
    return x, y.astype(np.float32)


def test_fit_learns_a_nonlinear_function_and_is_deterministic() -> None:
    x, y = _regression(6000)
    cfg = TrainConfig(epochs=40, batch_size=128, patience=40, seed=2)
    r1 = fit(Mlp.create([4, 32, 32, 1], seed=2), x, y, cfg)
    r2 = fit(Mlp.create([4, 32, 32, 1], seed=2), x, y, cfg)
    assert np.array_equal(r1.model.params, r2.model.params)
    assert r1.val_loss == r2.val_loss
    # variance of y is ~0.5; a linear fit leaves ~0.1; the MLP must do far better
    xt, yt = _regression(2000, seed=9)
    mse = float(np.mean((r1.model.forward(xt)[:, 0] - yt) ** 2))
    assert mse < 0.01, mse
    assert r1.train_loss[-1] < r1.train_loss[0] / 10


def test_early_stopping_keeps_the_best_epoch() -> None:
    # pure noise labels: validation loss cannot keep improving, so training stops early
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = rng.normal(size=600).astype(np.float32)
    cfg = TrainConfig(epochs=300, batch_size=32, lr=1e-2, patience=5, seed=1)
    r = fit(Mlp.create([8, 64, 64, 1], seed=1), x, y, cfg)
    assert r.stopped_early and r.epochs == r.best_epoch + cfg.patience < 300
    assert r.best_val_loss == min(r.val_loss)
    # the model holds the best epoch's weights: its validation loss is the recorded best
    perm = np.random.default_rng(cfg.seed).permutation(600)[:60]
    pv = r.model.forward(x[perm])[:, 0] - y[perm]
    assert float(np.mean(pv * pv)) == pytest.approx(r.best_val_loss, rel=1e-5)


def test_fit_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        fit(Mlp.create([3, 4, 1]), np.zeros((10, 2), np.float32), np.zeros(10, np.float32))


def test_fit_time_for_a_2x64_mlp_on_100k_rows() -> None:
    """Budget check (loose for a shared box): one epoch of 100k rows well under 10 s."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100_000, 40)).astype(np.float32)
    y = np.tanh(x[:, :3].sum(axis=1)).astype(np.float32)
    r = fit(Mlp.create([40, 64, 64, 1]), x, y, TrainConfig(epochs=2, patience=10))
    assert r.epochs == 2 and r.seconds / 2 < 10.0


# ---- DAgger on a toy plant ------------------------------------------------------------------


def _toy_rollout(seed: int, actor: object) -> tuple[np.ndarray, np.ndarray]:
    """x' = 0.9 x + u + w; expert u = -0.8 x + 0.5 r (a proportional controller)."""
    rng = np.random.default_rng(seed)
    x, r = rng.uniform(-2, 2), rng.uniform(-1, 1)
    feats, labels = [], []
    for _ in range(60):
        f = np.array([x, r], np.float32)
        u_star = -0.8 * x + 0.5 * r
        feats.append(f)
        labels.append(u_star)
        u = u_star if actor is None else actor(f)  # type: ignore[operator]
        x = 0.9 * x + u + rng.normal(0, 0.05)
    return np.array(feats), np.array(labels)


def test_dagger_imitates_the_expert_and_aggregates_rounds() -> None:
    seen: list[tuple[int, bool]] = []

    def rollout(seed: int, actor: object) -> tuple[np.ndarray, np.ndarray]:
        seen.append((seed, actor is None))
        return _toy_rollout(seed, actor)

    cfg = TrainConfig(epochs=30, batch_size=64, patience=30, seed=0)
    res = dagger(
        rollout,
        episodes=20,
        dagger_episodes=10,
        rounds=2,
        seed=3,
        hidden=(16,),
        out_scale=2.0,
        config=cfg,
    )
    assert len(res.x) == len(res.y) == 60 * (20 + 2 * 10) and len(res.fits) == 3
    assert [a for _, a in seen] == [True] * 20 + [False] * 20  # expert first, then student
    assert len({s for s, _ in seen}) == 40  # every rollout has its own seed
    assert res.val_mask.sum() == 60 * (2 + 1 + 1)  # episodes 9, 19 of round 0; 9 of rounds 1, 2
    assert res.rmse < 0.05 and res.val_rmse < 0.05  # labels span about +/-2
    f = np.array([1.0, 0.5], np.float32)
    assert res.student(f) == pytest.approx(-0.8 + 0.25, abs=0.05)
    again = dagger(
        _toy_rollout,
        episodes=20,
        dagger_episodes=10,
        rounds=2,
        seed=3,
        hidden=(16,),
        out_scale=2.0,
        config=cfg,
    )
    assert np.array_equal(again.model.params, res.model.params)


def test_student_scales_and_normalises() -> None:
    m = Mlp((2, 1), ("linear",), np.array([1.0, 0.0, 0.0], np.float32))  # y = x0
    s = Student(
        m, mean=np.array([10.0, 0.0]), std=np.array([2.0, 1.0]), out_scale=100.0, out_offset=5.0
    )
    assert s(np.array([14.0, 3.0])) == pytest.approx((14 - 10) / 2 * 100 + 5)
    np.testing.assert_allclose(s.predict(np.array([[12.0, 0.0]]))[:, 0], [105.0])


def test_episode_seeds_differ_by_round_and_episode() -> None:
    seeds = {episode_seed(1, r, i) for r in range(3) for i in range(50)}
    assert len(seeds) == 150 and episode_seed(1, 0, 0) == episode_seed(1, 0, 0)
    assert episode_seed(1, 0, 0) != episode_seed(2, 0, 0)


def test_fit_runs_blas_single_threaded_and_restores_it() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    seen: list[list[int]] = []
    x, y = _regression(500)
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas()
        fit(Mlp.create([4, 8, 1]), x, y, TrainConfig(epochs=2), log=lambda _m: seen.append(blas()))
        assert blas() == before
    assert seen and all(t == [1] for t in seen)
