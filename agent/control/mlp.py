"""A small numpy MLP and imitation learning (DAgger) for control policies, without TensorFlow.

The gateway is an aarch64 box with numpy and no TensorFlow, so a policy is trained here:
- `Mlp`: dense layers (`tanh`/`relu`/`linear`), float32, every weight a view into one flat
  parameter vector (so Adam is a handful of vectorised operations per step); `forward`,
  `loss_and_grad` (MSE, backprop), `layers()` for `agent.control.tflite_writer`.
- `fit`: minibatch Adam with cosine learning-rate decay and early stopping on a validation
  set (the best weights are kept).
- `dagger`: imitation of an expert by DAgger (Ross et al. 2011): expert-driven rollouts,
  then rounds with the student in the loop while the expert still labels every state.

Everything is seeded: the same seed, data and machine give the same weights (numpy's BLAS
picks its kernels by CPU, so another CPU model may differ in the last bits).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ACTIVATIONS = ("tanh", "relu", "linear")


def _act_name(a: str | None) -> str:
    name = "linear" if a is None or a == "none" else a
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {a!r} not one of {ACTIVATIONS}")
    return name


class Mlp:
    """Dense MLP `sizes[0] -> ... -> sizes[-1]`, one activation per layer, float32.

    `weights[i]` has shape `(sizes[i], sizes[i+1])` (`y = act(x @ w + b)`); weights and
    biases are views into `params`, gradients are written into a flat vector of its size.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activations: Sequence[str | None],
        params: np.ndarray | None = None,
    ) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"sizes {sizes} must be >= 2 positive layer widths")
        self.activations = tuple(_act_name(a) for a in activations)
        if len(self.activations) != len(self.sizes) - 1:
            raise ValueError(f"{len(self.sizes) - 1} layers need as many activations")
        self._shapes = list(itertools.pairwise(self.sizes))
        self.n_params = sum(a * b + b for a, b in self._shapes)
        if params is None:
            params = np.zeros(self.n_params, np.float32)
        params = np.ascontiguousarray(params, np.float32)
        if params.shape != (self.n_params,):
            raise ValueError(f"params has shape {params.shape}, expected ({self.n_params},)")
        self.params = params
        self.weights, self.biases = self._views(self.params)

    def _views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        ws, bs, o = [], [], 0
        for a, b in self._shapes:
            ws.append(flat[o : o + a * b].reshape(a, b))
            o += a * b
            bs.append(flat[o : o + b])
            o += b
        return ws, bs

    @classmethod
    def create(
        cls,
        sizes: Sequence[int],
        hidden_activation: str = "tanh",
        output_activation: str | None = "linear",
        seed: int = 0,
    ) -> Mlp:
        """Glorot-uniform weights, zero biases (Keras' defaults), from `seed`."""
        acts = [hidden_activation] * (len(sizes) - 2) + [output_activation]
        m = cls(sizes, acts)
        rng = np.random.default_rng(seed)
        for w in m.weights:
            lim = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
            w[...] = rng.uniform(-lim, lim, w.shape).astype(np.float32)
        return m

    def copy(self) -> Mlp:
        return Mlp(self.sizes, self.activations, self.params.copy())

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch `(n, n_in)` -> `(n, n_out)`, or one row `(n_in,)` -> `(n_out,)`."""
        h = np.asarray(x, np.float32)
        for w, b, act in zip(self.weights, self.biases, self.activations, strict=True):
            h = h @ w
            h += b
            if act == "tanh":
                np.tanh(h, out=h)
            elif act == "relu":
                np.maximum(h, 0.0, out=h)
        return h

    def predict(self, x: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        """`forward` in chunks (bounded memory for large data sets)."""
        x = np.asarray(x, np.float32)
        return np.concatenate(
            [self.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
            or [np.zeros((0, self.sizes[-1]), np.float32)]
        )

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray, grad: np.ndarray) -> float:
        """MSE over the batch and outputs; its gradient is written into `grad` (flat)."""
        acts = [np.asarray(x, np.float32)]
        h = acts[0]
        for w, b, act in zip(self.weights, self.biases, self.activations, strict=True):
            h = h @ w
            h += b
            if act == "tanh":
                np.tanh(h, out=h)
            elif act == "relu":
                np.maximum(h, 0.0, out=h)
            acts.append(h)
        diff = h - y
        loss = float(np.mean(diff * diff))
        d = diff * np.float32(2.0 / diff.size)
        gws, gbs = self._views(grad)
        for i in range(len(self.weights) - 1, -1, -1):
            a_out, act = acts[i + 1], self.activations[i]
            if act == "tanh":
                d *= 1.0 - a_out * a_out
            elif act == "relu":
                d *= a_out > 0
            np.matmul(acts[i].T, d, out=gws[i])
            np.sum(d, axis=0, out=gbs[i])
            if i:
                d = d @ self.weights[i].T
        return loss

    def layers(self) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """`(w, b, activation)` per layer, as `agent.control.tflite_writer` takes them."""
        return [
            (w.copy(), b.copy(), a)
            for w, b, a in zip(self.weights, self.biases, self.activations, strict=True)
        ]

    def to_tflite(self, **kwargs: str) -> bytes:
        """This network as a `.tflite` flatbuffer (input `[1, n_in]`, output `[1, n_out]`)."""
        from agent.control.tflite_writer import mlp_to_tflite

        return mlp_to_tflite(self.layers(), **kwargs)


class Adam:
    """Adam (Kingma & Ba) on a flat parameter vector, in place; float32 state."""

    def __init__(self, n: int, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-7) -> None:
        self.m = np.zeros(n, np.float32)
        self.v = np.zeros(n, np.float32)
        self.b1, self.b2, self.eps = beta1, beta2, eps
        self.t = 0
        self._tmp = np.zeros(n, np.float32)

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.t += 1
        b1, b2, tmp = self.b1, self.b2, self._tmp
        self.m *= b1
        self.m += (1.0 - b1) * grad
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - b2
        self.v *= b2
        self.v += tmp
        # bias correction folded into the step size (as Keras/TF do)
        a = lr * math.sqrt(1.0 - b2**self.t) / (1.0 - b1**self.t)
        np.sqrt(self.v, out=tmp)
        tmp += self.eps
        np.divide(self.m, tmp, out=tmp)
        tmp *= a
        params -= tmp


@dataclass(frozen=True)
class TrainConfig:
    """Minibatch Adam, cosine-decayed learning rate, early stopping on validation MSE."""

    epochs: int = 60  # upper bound; early stopping may end sooner
    batch_size: int = 256
    lr: float = 3e-3
    lr_final_frac: float = 0.02  # cosine decay from lr to lr * lr_final_frac
    val_fraction: float = 0.1  # random rows held out when no validation set is given
    patience: int = 10  # epochs without a better validation loss before stopping
    min_delta: float = 0.0  # an improvement must beat the best by this much (relative)
    seed: int = 0
    # BLAS threads while fitting. 1: minibatch matmuls are too small to gain from threads,
    # and OpenBLAS threads spinning against a busy core made a fit 15x slower on the 2-core
    # box (70.8 s vs 4.9 s for 60 epochs of 100k rows). None leaves BLAS as it is.
    blas_threads: int | None = 1


@dataclass
class FitResult:
    model: Mlp  # with the weights of the best validation epoch
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch - 1] if self.val_loss else math.nan


def blas_threads(n: int | None) -> contextlib.AbstractContextManager[Any]:
    """Limit numpy's BLAS to `n` threads inside the block (`threadpoolctl`); None: no limit."""
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    limits: contextlib.AbstractContextManager[Any] = threadpool_limits(limits=n, user_api="blas")
    return limits


def _as_2d(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float32)
    return y[:, None] if y.ndim == 1 else y


def fit(
    model: Mlp,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig = TrainConfig(),
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Train `model` in place on `(x, y)` (inputs already normalised); keep the best epoch.

    Without `x_val`, a seeded random `config.val_fraction` of the rows is held out.
    """
    with blas_threads(config.blas_threads):
        return _fit(model, x, y, config, x_val, y_val, log)


def _fit(
    model: Mlp,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    log: Callable[[str], None] | None,
) -> FitResult:
    t0 = time.perf_counter()
    x = np.asarray(x, np.float32)
    y = _as_2d(y)
    if len(x) != len(y) or x.shape[1] != model.sizes[0] or y.shape[1] != model.sizes[-1]:
        raise ValueError(f"x {x.shape} / y {y.shape} do not fit an MLP {model.sizes}")
    rng = np.random.default_rng(config.seed)
    if x_val is None:
        n_val = round(len(x) * config.val_fraction)
        if n_val < 1 or n_val >= len(x):
            raise ValueError(f"val_fraction {config.val_fraction} leaves no validation rows")
        perm = rng.permutation(len(x))
        x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
        x, y = x[perm[n_val:]], y[perm[n_val:]]
    else:
        if y_val is None:
            raise ValueError("x_val given without y_val")
        x_val, y_val = np.asarray(x_val, np.float32), _as_2d(y_val)
    n, bs = len(x), max(1, int(config.batch_size))
    steps_per_epoch = (n + bs - 1) // bs
    total = max(1, config.epochs * steps_per_epoch)
    opt = Adam(model.n_params)
    grad = np.zeros(model.n_params, np.float32)
    res = FitResult(model)
    best = math.inf
    best_params = model.params.copy()
    step = 0
    for epoch in range(1, config.epochs + 1):
        perm = rng.permutation(n)
        xs, ys = x[perm], y[perm]
        total_loss = 0.0
        for i in range(0, n, bs):
            frac = min(step, total) / total
            lr = config.lr * (
                config.lr_final_frac
                + (1.0 - config.lr_final_frac) * 0.5 * (1.0 + math.cos(math.pi * frac))
            )
            xb, yb = xs[i : i + bs], ys[i : i + bs]
            total_loss += model.loss_and_grad(xb, yb, grad) * len(xb)
            opt.step(model.params, grad, lr)
            step += 1
        res.train_loss.append(total_loss / n)
        pv = model.predict(x_val) - y_val
        val = float(np.mean(pv * pv))
        res.val_loss.append(val)
        if not math.isfinite(val):
            break
        if val < best * (1.0 - config.min_delta):
            best, res.best_epoch = val, epoch
            best_params[...] = model.params
        if log is not None:
            log(f"epoch {epoch}: train {res.train_loss[-1]:.3g}, val {val:.3g}")
        if epoch - res.best_epoch >= config.patience:
            res.stopped_early = epoch < config.epochs
            break
    if res.best_epoch:
        model.params[...] = best_params
    res.seconds = time.perf_counter() - t0
    return res


# ---- imitation learning -------------------------------------------------------------------

Actor = Callable[[np.ndarray], Any]
"""The student in the loop: raw (unnormalised) feature vector -> action in label units."""

Rollout = Callable[[int, Actor | None], tuple[np.ndarray, np.ndarray]]
"""`rollout(episode_seed, actor)` runs one episode and returns `(features (n, n_in), expert
labels (n,) or (n, n_out))`. With `actor=None` the expert's action is applied; otherwise the
actor's. Either way the expert labels every visited state (a stateful expert - an MPC with
an estimator - must see every period, so the rollout owns it)."""


@dataclass
class Student:
    """A trained network with its input normalisation and output scaling: raw x -> action."""

    model: Mlp
    mean: np.ndarray
    std: np.ndarray
    out_scale: float = 1.0
    out_offset: float = 0.0

    def __post_init__(self) -> None:
        self._mean = np.asarray(self.mean, np.float32)
        self._inv = (1.0 / np.asarray(self.std, np.float64)).astype(np.float32)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) - self._mean) * self._inv

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Actions for a batch of raw feature rows, in label units, shape `(n, n_out)`."""
        return self.model.predict(self.normalise(x)) * self.out_scale + self.out_offset

    def __call__(self, x: np.ndarray) -> Any:
        y = self.model.forward(self.normalise(x)) * self.out_scale + self.out_offset
        return float(y[0]) if y.shape == (1,) else y


@dataclass
class DaggerResult:
    student: Student
    x: np.ndarray  # all raw features, every round
    y: np.ndarray  # expert labels, (n, n_out)
    val_mask: np.ndarray  # rows of held-out episodes (early stopping, val_rmse)
    fits: list[FitResult]
    rmse: float  # student vs expert on the training rows, label units
    val_rmse: float  # on the held-out episodes' rows
    seconds: float
    rollout_seconds: float
    fit_seconds: float

    @property
    def model(self) -> Mlp:
        return self.student.model


def episode_seed(seed: int, round_: int, episode: int) -> int:
    """The seed of one rollout (round 0 = expert-driven), independent for every triple."""
    return int(np.random.SeedSequence([seed, round_, episode]).generate_state(1)[0])


def dagger(
    rollout: Rollout,
    *,
    episodes: int,
    dagger_episodes: int,
    rounds: int,
    seed: int,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    out_scale: float = 1.0,
    out_offset: float = 0.0,
    config: TrainConfig | None = None,
    val_every: int = 10,
    min_std: float = 1e-3,
    log: Callable[[str], None] = lambda _m: None,
) -> DaggerResult:
    """Imitate the expert inside `rollout` with an MLP, by DAgger.

    Round 0 runs `episodes` expert-driven rollouts; each of the `rounds` DAgger rounds runs
    `dagger_episodes` more with the current student acting (the expert still labels), adds
    them to the data and retrains from the same seed on everything. Every `val_every`-th
    episode of each round is held out (whole episodes: neighbouring periods are nearly equal,
    a random row split would leak) for early stopping and `val_rmse`. Inputs are normalised
    with the mean/std of round 0 (std floored at `min_std`), targets are
    `(label - out_offset) / out_scale`. The network: `hidden` layers of `activation`, a
    linear output.
    """
    if episodes < 1 or rounds < 0 or dagger_episodes < 0:
        raise ValueError("dagger needs episodes >= 1, rounds >= 0, dagger_episodes >= 0")
    cfg = config if config is not None else TrainConfig(seed=seed)
    t0 = time.perf_counter()
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    held: list[np.ndarray] = []
    rollout_s = fit_s = 0.0
    fits: list[FitResult] = []
    student: Student | None = None
    mean = std = np.zeros(0, np.float32)

    def collect(round_: int, n: int, actor: Actor | None) -> None:
        nonlocal rollout_s
        t = time.perf_counter()
        for i in range(n):
            x, y = rollout(episode_seed(seed, round_, i), actor)
            x, y = np.asarray(x, np.float32), _as_2d(y)
            if len(x) != len(y):
                raise ValueError(f"rollout returned {len(x)} feature rows and {len(y)} labels")
            xs.append(x)
            ys.append(y)
            held.append(np.full(len(x), val_every > 0 and i % val_every == val_every - 1))
        rollout_s += time.perf_counter() - t

    for r in range(rounds + 1):
        if r == 0:
            log(f"DAgger: {episodes} expert-driven episodes (seed {seed}) ...")
            collect(0, episodes, None)
            x0 = np.concatenate(xs)
            mean = x0.mean(axis=0, dtype=np.float64).astype(np.float32)
            std = np.maximum(x0.std(axis=0, dtype=np.float64), min_std).astype(np.float32)
        elif dagger_episodes:
            log(f"DAgger round {r}: {dagger_episodes} episodes with the student in the loop ...")
            collect(r, dagger_episodes, student)
        else:
            break
        x, y, mask = np.concatenate(xs), np.concatenate(ys), np.concatenate(held)
        xn = (x - mean) / std
        t = (y - out_offset) / out_scale
        model = Mlp.create([x.shape[1], *hidden, y.shape[1]], activation, "linear", seed)
        tf0 = time.perf_counter()
        if mask.any() and not mask.all():
            fr = fit(model, xn[~mask], t[~mask], cfg, xn[mask], t[mask])
        else:
            fr = fit(model, xn, t, cfg)
        fit_s += time.perf_counter() - tf0
        fits.append(fr)
        log(
            f"  fit on {len(x)} rows: {fr.epochs} epochs (best {fr.best_epoch}), "
            f"val MSE {fr.best_val_loss:.3g}, {fr.seconds:.1f} s"
        )
        student = Student(model, mean, std, out_scale, out_offset)
    assert student is not None
    x, y, mask = np.concatenate(xs), np.concatenate(ys), np.concatenate(held)
    err = student.predict(x) - y

    def rms(e: np.ndarray) -> float:
        return float(np.sqrt(np.mean(e * e))) if e.size else math.nan

    return DaggerResult(
        student=student,
        x=x,
        y=y,
        val_mask=mask,
        fits=fits,
        rmse=rms(err[~mask]),
        val_rmse=rms(err[mask]),
        seconds=time.perf_counter() - t0,
        rollout_seconds=rollout_s,
        fit_seconds=fit_s,
    )
