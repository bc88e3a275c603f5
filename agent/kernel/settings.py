"""The `kernel:` YAML section: per-tag defaults, per-tag overrides, multivariate groups.

Every window, count and hysteresis length is in *samples* of the tag's own poll group (the
kernel runs once per poll), never in seconds; only the rate limit is per second because it
uses the sample timestamps.  `TagOverride` is generated from `TagParams` so the two can never
disagree on names, types or bounds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from drivers.configbase import StrictModel

MAX_HAMPEL_WINDOW = 63
MAX_LAGS = 8  # dynamic PCA lags per group
MAX_AUTO_LAGS = 3  # the most `lags: auto` picks
MAX_PERSISTENCE_WINDOW = 64
AlarmCause = Literal["score", "drift", "spike", "stuck", "out_of_range"]

# What a tag's values are, from its configured type (`signal_kind`).  Discrete signals (a bool
# or a bit, a status word, a counter, an integer code, a string) carry exact values: smoothing
# one publishes a bool as 0.99973, a Hampel median or a rate limit invents a value the PLC never
# had, and their level moves (a state change, a counter wrapping) are not drift.  So their
# defaults pass the value through unchanged and keep only the sensor checks (stuck, range);
# `kernel.tags.<name>` still sets anything explicitly.
SignalKind = Literal["analog", "discrete"]
KIND_DEFAULTS: dict[str, Any] = {"filter": "none", "hampel_window": 0, "rate_limit_per_s": None}
LEVEL_CAUSES = ("score", "drift")  # alarm causes dropped from a discrete tag's defaults
INTEGER_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "uint64")


def signal_kind(dtype: str, scale: float = 1.0) -> SignalKind:
    """`discrete` for bool, bit, string and unscaled integer types; else `analog`.

    An integer register with a scale other than 1 is an analog measurement sent as an
    integer (a temperature in tenths of a degree), so it is filtered like a float.
    """
    if dtype in ("bool", "bit", "string"):
        return "discrete"
    if dtype in INTEGER_TYPES and scale == 1.0:
        return "discrete"
    return "analog"


class TagParams(StrictModel):
    """Per-tag stage settings (`kernel.defaults`, and each `kernel.tags.<name>` on top)."""

    filter: Literal["ewma", "kalman", "none"] = Field(
        "ewma", description="Smoothing of the published value: ewma | kalman | none."
    )
    ewma_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.3,
        description="EWMA weight of the newest sample (0 < a <= 1); smaller: smoother, slower.",
    )
    kalman_q: Annotated[float, Field(ge=0.0)] = Field(
        1e-3, description="Kalman process noise variance per sample, in the tag's unit squared."
    )
    kalman_r: Annotated[float, Field(gt=0.0)] = Field(
        1e-2, description="Kalman measurement noise variance, in the tag's unit squared."
    )
    hampel_window: Annotated[int, Field(ge=0, le=MAX_HAMPEL_WINDOW)] = Field(
        11,
        description="Samples in the Hampel spike window, odd and >= 3; 0 disables spike rejection.",
    )
    hampel_k: Annotated[float, Field(gt=0.0)] = Field(
        5.0,
        description="Spike threshold in robust standard deviations (1.4826 x MAD) from the median.",
    )
    spike_min_dev: Annotated[float, Field(ge=0.0)] = Field(
        0.0,
        description="Smallest deviation from the median, in the tag's unit, that can be a spike.",
    )
    rate_limit_per_s: Annotated[float, Field(gt=0.0)] | None = Field(
        None,
        description="Largest change of the accepted value, tag unit per second; unset: off.",
    )
    stuck_samples: Annotated[int, Field(ge=0)] = Field(
        60, description="Run of unchanged raw samples that marks the sensor STUCK; 0 disables."
    )
    stuck_epsilon: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="A change no larger than this, in the tag's unit, counts as no change."
    )
    stuck_min_move_rate: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description="Share of samples (0..1) that must normally change for STUCK to apply."
    )
    baseline_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.01, description="Learning rate per sample of the slow baseline and residual scale."
    )
    noise_floor: Annotated[float, Field(gt=0.0)] = Field(
        1e-6,
        description="Smallest residual scale, in the tag's unit; keeps z finite on flat signals.",
    )
    cusum_k: Annotated[float, Field(ge=0.0)] = Field(
        0.5, description="Drift CUSUM allowance, in residual scales."
    )
    cusum_h: Annotated[float, Field(gt=0.0)] = Field(
        12.0, description="Drift CUSUM decision interval, in residual scales."
    )
    score_threshold: Annotated[float, Field(gt=0.0)] = Field(
        6.0, description="Robust z (residual scales) above which a sample's score is bad."
    )
    alarm_on_samples: Annotated[int, Field(ge=1)] = Field(
        3, description="Consecutive bad samples that turn the tag's ANOMALOUS alarm on."
    )
    alarm_off_samples: Annotated[int, Field(ge=1)] = Field(
        10, description="Consecutive clear samples that turn the tag's ANOMALOUS alarm off."
    )
    # what makes a sample "bad" for the per-tag ANOMALOUS alarm.  Default: the sensor is
    # untrustworthy (stuck, out of range).  `score`/`drift` also fire on intended moves of an
    # operated variable (a setpoint step), so they are opt-in per tag.
    alarm_on: tuple[AlarmCause, ...] = Field(
        ("stuck", "out_of_range"),
        description="Causes that make a sample bad: stuck, out_of_range, score, drift, spike.",
    )
    warmup_samples: Annotated[int, Field(ge=1)] = Field(
        30, description="Valid samples before score and drift are evaluated."
    )
    check_range: bool = Field(
        True, description="Samples outside the tag's min/max are OUT_OF_RANGE and not used."
    )
    # false-alarm budget of the score (either, not both): the score limit and a k-out-of-n
    # persistence computed from the tag's warm-up; replaces score_threshold (as the alarm
    # limit) and the alarm_on/off_samples hysteresis
    false_alarm_rate: Annotated[float, Field(gt=0.0, lt=0.5)] | None = Field(
        None, description="False-alarm budget: share of normal samples in alarm (0 < r < 0.5)."
    )
    false_alarms_per_day: Annotated[float, Field(gt=0.0)] | None = Field(
        None, description="False-alarm budget: alarm onsets per day on normal data."
    )
    persistence_window: Annotated[int, Field(ge=1, le=MAX_PERSISTENCE_WINDOW)] = Field(
        10, description="n of the budget's k-out-of-n alarm, in samples (k is computed)."
    )

    @field_validator("hampel_window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v != 0 and (v < 3 or v % 2 == 0):
            raise ValueError("hampel_window must be 0 (off) or odd and >= 3, centred on a median")
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> TagParams:
        if self.false_alarm_rate is not None and self.false_alarms_per_day is not None:
            raise ValueError("give false_alarm_rate or false_alarms_per_day, not both")
        return self

    @property
    def budgeted(self) -> bool:
        """True when the score limit and persistence come from a false-alarm budget."""
        return self.false_alarm_rate is not None or self.false_alarms_per_day is not None


BUDGET_KEYS = ("false_alarm_rate", "false_alarms_per_day")
FIXED_ALARM_KEYS = ("score_threshold", "alarm_on_samples", "alarm_off_samples")


def budget_clash(given: set[str] | frozenset[str]) -> str | None:
    """The message when keys given together mix a budget with the fixed limit/count keys."""
    if not given & set(BUDGET_KEYS):
        return None
    clash = sorted(given & set(FIXED_ALARM_KEYS))
    if not clash:
        return None
    return (
        f"{', '.join(clash)} cannot be combined with a false-alarm budget (the budget sets "
        "the score limit and the persistence)"
    )


def _override_clash(self: Any) -> Any:
    """`kernel.tags.<name>` validator: a budget and fixed keys in the same override."""
    msg = budget_clash({k for k in self.model_fields_set if getattr(self, k) is not None})
    if msg:
        raise ValueError(msg)
    if self.false_alarm_rate is not None and self.false_alarms_per_day is not None:
        raise ValueError("give false_alarm_rate or false_alarms_per_day, not both")
    return self


def _optional_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in TagParams.model_fields.items():
        ann = info.annotation
        inner = Annotated[(ann, *info.metadata)] if info.metadata else ann
        fields[name] = (inner | None, Field(None, description=info.description))
    return fields


TagOverride = create_model(
    "TagOverride",
    __base__=StrictModel,
    __doc__="Per-tag overrides: any `TagParams` key; unset keys fall back to `kernel.defaults`.",
    __validators__={"_budget": model_validator(mode="after")(_override_clash)},
    **_optional_fields(),
)


class GroupSettings(StrictModel):
    """One multivariate group: PCA with Hotelling T2 and SPE (Q), learned from a warm-up."""

    name: str = Field(min_length=1, description="Group name, unique; labels its score and events.")
    tags: list[str] = Field(
        min_length=2, description="Member tags (two or more) that move together."
    )
    warmup_samples: Annotated[int, Field(ge=20)] = Field(
        400, description="Valid samples of all members the PCA model is learned from."
    )
    variance_explained: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.9, description="Share of variance the kept principal components must explain."
    )
    n_components: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Exact number of principal components; overrides variance_explained."
    )
    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = Field(
        0.001, description="Per-sample significance of the T2 and SPE limits (not an alarm rate)."
    )
    score_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.1, description="EWMA weight of the newest sample in the group score (1 = no smoothing)."
    )
    alarm_on_samples: Annotated[int, Field(ge=1)] = Field(
        10, description="Consecutive samples above the limit that turn GROUP_ALARM on."
    )
    alarm_off_samples: Annotated[int, Field(ge=1)] = Field(
        20, description="Consecutive samples below the limit that turn GROUP_ALARM off."
    )
    adapt_alpha: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="EWMA rate at which member means and scales follow drift; 0 = frozen."
    )
    # false-alarm budget (either, not both): limits and a k-out-of-n persistence computed from
    # the warm-up so that normal data alarm this often; replaces alpha and the hysteresis
    false_alarm_rate: Annotated[float, Field(gt=0.0, lt=0.5)] | None = Field(
        None, description="False-alarm budget: share of normal samples in alarm (0 < r < 0.5)."
    )
    false_alarms_per_day: Annotated[float, Field(gt=0.0)] | None = Field(
        None, description="False-alarm budget: alarm onsets per day on normal data."
    )
    persistence_window: Annotated[int, Field(ge=1, le=MAX_PERSISTENCE_WINDOW)] = Field(
        10, description="n of the budget's k-out-of-n alarm, in samples (k is computed)."
    )
    # dynamic PCA: the model sees each member at t, t-1, .., t-lags; `auto` picks 0..MAX_AUTO_LAGS
    # from the warm-up's partial autocorrelation
    lags: Annotated[int, Field(ge=0, le=MAX_LAGS)] | Literal["auto"] = Field(
        0, description="Past samples per member in the model (dynamic PCA), or auto (0..3)."
    )

    @model_validator(mode="after")
    def _unique_tags(self) -> GroupSettings:
        if len(set(self.tags)) != len(self.tags):
            raise ValueError(f"group {self.name!r} lists a tag twice")
        if self.false_alarm_rate is not None and self.false_alarms_per_day is not None:
            raise ValueError(
                f"group {self.name!r}: give false_alarm_rate or false_alarms_per_day, not both"
            )
        if self.budgeted:
            clash = sorted(
                {"alpha", "alarm_on_samples", "alarm_off_samples"} & self.model_fields_set
            )
            if clash:
                raise ValueError(
                    f"group {self.name!r}: {', '.join(clash)} cannot be combined with a "
                    "false-alarm budget (the budget sets the limits and the persistence)"
                )
        return self

    @property
    def budgeted(self) -> bool:
        """True when the limits come from a false-alarm budget (else from `alpha`)."""
        return self.false_alarm_rate is not None or self.false_alarms_per_day is not None


class KernelConfig(StrictModel):
    """`kernel:` section; every default of the kernel lives in the models above."""

    defaults: TagParams = Field(TagParams(), description="Per-tag settings of every tag.")
    tags: dict[str, TagOverride] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Per-tag overrides of `defaults`, keyed by tag name."
    )
    groups: list[GroupSettings] = Field(
        default_factory=list, description="Multivariate (PCA) groups of related tags."
    )

    @field_validator("defaults")
    @classmethod
    def _defaults_budget(cls, v: TagParams) -> TagParams:
        msg = budget_clash(set(v.model_fields_set))
        if msg:
            raise ValueError(msg)
        return v

    @field_validator("tags")
    @classmethod
    def _tags_budget(cls, v: dict[str, Any], info: Any) -> dict[str, Any]:
        """A budget in `kernel.defaults` and fixed keys in a tag's override are refused too:
        the tag would have both.  (A tag's own budget wins over fixed keys in the defaults,
        as it replaces a budget there.)"""
        d = info.data.get("defaults")
        if d is None or not set(d.model_fields_set) & set(BUDGET_KEYS):
            return v
        for name, o in v.items():
            own = {k for k in o.model_fields_set if getattr(o, k) is not None}
            if own & set(BUDGET_KEYS):
                continue
            msg = budget_clash(own | set(BUDGET_KEYS))
            if msg:
                raise ValueError(f"tag {name!r}: {msg} (the budget of kernel.defaults)")
        return v

    @model_validator(mode="after")
    def _check(self) -> KernelConfig:
        seen: set[str] = set()
        for g in self.groups:
            if g.name in seen:
                raise ValueError(f"kernel group name {g.name!r} used twice")
            seen.add(g.name)
        for name in self.tags:
            self.params_for(name)  # merged overrides must validate too
        return self

    def params_for(self, tag: str, kind: SignalKind = "analog") -> TagParams:
        """Effective settings of one tag: `kernel.defaults`, then the defaults of its signal
        kind (`KIND_DEFAULTS`: a discrete signal passes unchanged), then its own override."""
        override = self.tags.get(tag)
        if override is None and kind == "analog":
            return self.defaults
        merged = self.defaults.model_dump()
        if kind != "analog":
            merged.update(KIND_DEFAULTS)
            merged["alarm_on"] = tuple(c for c in merged["alarm_on"] if c not in LEVEL_CAUSES)
        if override is not None:
            own = override.model_dump(exclude_none=True)
            if any(k in own for k in BUDGET_KEYS):  # the tag's own budget replaces the default
                for k in BUDGET_KEYS:
                    merged[k] = None
            merged.update(own)
        return TagParams.model_validate(merged)

    def unknown_tags(self, known: set[str] | list[str]) -> list[str]:
        """Problems for `edgeloop check`: overrides and group members naming no configured tag."""
        known = set(known)
        problems = [f"kernel.tags.{name}: no such tag" for name in self.tags if name not in known]
        for i, g in enumerate(self.groups):
            problems += [
                f"kernel.groups[{i}].tags: no such tag {t!r}" for t in g.tags if t not in known
            ]
        return problems


def cross_check(cfg: Any, tag_index: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """`agent.config` hook: kernel overrides and group members must name numeric tags."""
    k: KernelConfig = cfg.kernel
    out: list[tuple[tuple[str | int, ...], str]] = []
    for name in k.tags:
        ref = tag_index.get(name)
        if ref is None:
            out.append((("kernel", "tags", name), f"no such tag {name!r}"))
        elif ref.type == "string":
            out.append((("kernel", "tags", name), f"tag {name!r} is a string tag"))
    for gi, g in enumerate(k.groups):
        for ti, t in enumerate(g.tags):
            ref = tag_index.get(t)
            if ref is None:
                out.append((("kernel", "groups", gi, "tags", ti), f"no such tag {t!r}"))
            elif ref.type == "string":
                out.append((("kernel", "groups", gi, "tags", ti), f"tag {t!r} is a string tag"))
    return out
