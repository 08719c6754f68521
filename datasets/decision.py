"""The decision rule: which treatment to recommend from the model's per-treatment predictions.

    from spinecast.datasets.decision import DecisionRule, decide
    decision = decide(samples, propensity, DecisionRule())   # samples (N, K, 4), propensity (N, 4)
    decision.recommended                                      # (N,) index in TREATMENTS

Not the argmax of P(satisfied). Treatments are climbed in order of invasiveness (TREATMENTS order:
physical therapy, injection, decompression, fusion), starting from physical therapy: a more
invasive treatment replaces the current choice only when

- its predicted benefit over the current choice is clearly positive: the `quantile` of the
  benefit over the model's K ensemble members (bootstrap heads, see training/model.py) exceeds
  `margin` for the injection and `surgical_margin` for decompression and fusion (an operation's
  risks, complications, revision and recovery, are not in P(satisfied), so it must gain more to be
  worth them); and
- similar patients did receive it: its propensity (the model's estimate of P(treatment | chart)
  among the training patients) is at least `support_floor`. Below the floor the model
  extrapolates, so the treatment is not recommended and a warning says why.

The rule is shared by training (the evaluation report scores it) and serving (the predictor answers
with it); its settings travel in the model bundle's card. Torch-free: numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .schema import TREATMENTS

CONSERVATIVE = 0  # physical therapy: where the climb starts
SURGICAL = tuple(i for i, t in enumerate(TREATMENTS) if t in ("decompression", "fusion"))


@dataclass(frozen=True)
class DecisionRule:
    margin: float = 0.02  # P(satisfied) points the lower bound of the benefit must exceed
    # the same, for decompression and fusion: 8 points of P(satisfied) (one more satisfied patient
    # in about 12 operated) before an operation's own risks are taken (README "The recommendation")
    surgical_margin: float = 0.08
    quantile: float = 0.2  # lower bound = this quantile of the benefit over the ensemble members
    support_floor: float = 0.05  # propensity below which a treatment lacks support
    interval: float = 0.8  # coverage of the per-treatment interval reported to clients

    def __post_init__(self):
        for name, low, high in (
            ("margin", -1, 1),
            ("surgical_margin", -1, 1),
            ("quantile", 0, 0.5),
            ("support_floor", 0, 1),
            ("interval", 0, 1),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"decision rule: {name} must be in [{low}, {high}]; got {value}")

    def margin_of(self, treatment: int) -> float:
        return self.surgical_margin if treatment in SURGICAL else self.margin

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> DecisionRule:
        return cls(**(data or {}))


@dataclass
class Decision:
    recommended: np.ndarray  # (N,) index in TREATMENTS
    argmax: np.ndarray  # (N,) highest mean P(satisfied), for comparison
    mean: np.ndarray  # (N, T) mean P(satisfied) over the ensemble
    low: np.ndarray  # (N, T) lower end of the `interval` of P(satisfied)
    high: np.ndarray  # (N, T)
    benefit: np.ndarray  # (N, T) mean benefit over physical therapy
    benefit_low: np.ndarray  # (N, T) the rule's lower bound of that benefit
    supported: np.ndarray  # (N, T) bool: propensity >= support_floor
    reasons: list[str] = field(default_factory=list)  # (N,) why the recommendation was made
    warnings: list[list[str]] = field(default_factory=list)  # (N,) per patient


def decide(samples: np.ndarray, propensity: np.ndarray | None, rule: DecisionRule) -> Decision:
    """`samples`: (N, K, T) P(satisfied) of each of K ensemble members (K = 1: point estimates,
    then the lower bound is the estimate itself); `propensity`: (N, T) or None (support unknown:
    every treatment counts as supported)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[2] != len(TREATMENTS):
        raise ValueError(f"samples must have shape (N, K, {len(TREATMENTS)}); got {samples.shape}")
    n = samples.shape[0]
    mean = samples.mean(axis=1)
    tail = (1 - rule.interval) / 2
    low, high = _quantiles(samples, (tail, 1 - tail))
    # the rule's lower bound of every treatment's gain over every other: (N, T, T), [:, t, c] is
    # t over c
    pairs = samples[:, :, :, None] - samples[:, :, None, :]
    [lower] = _quantiles(pairs, (rule.quantile,))
    supported = (
        np.ones_like(mean, dtype=bool)
        if propensity is None
        else np.asarray(propensity, dtype=np.float64) >= rule.support_floor
    )
    supported[:, CONSERVATIVE] = True  # the conservative option is always available
    rows = np.arange(n)
    current = np.full(n, CONSERVATIVE)
    lower_vs_current = np.zeros(n)
    for t in range(CONSERVATIVE + 1, len(TREATMENTS)):
        gain = lower[rows, t, current]  # vs the current choice
        climb = (gain > rule.margin_of(t)) & supported[:, t]
        current = np.where(climb, t, current)
        lower_vs_current = np.where(climb, gain, lower_vs_current)
    decision = Decision(
        recommended=current,
        argmax=mean.argmax(axis=1),
        mean=mean,
        low=low,
        high=high,
        benefit=pairs[:, :, :, CONSERVATIVE].mean(axis=1),
        benefit_low=lower[:, :, CONSERVATIVE],
        supported=supported,
    )
    for i in range(n):
        decision.reasons.append(_reason(decision, i, lower_vs_current[i], rule))
        decision.warnings.append(_support_warnings(decision, i, rule))
    return decision


def _quantiles(x: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """`np.quantile(x, q, axis=1)` (its default linear method) for each q, from one sort: at
    serving's batch of one, np.quantile's fixed cost was most of the rule's time (0.3 ms a call)."""
    x = np.sort(x, axis=1)
    out = []
    for q in qs:
        position = q * (x.shape[1] - 1)
        below = int(np.floor(position))
        above = min(below + 1, x.shape[1] - 1)
        weight = position - below
        out.append(x[:, below] + weight * (x[:, above] - x[:, below]))
    return out


def _reason(d: Decision, i: int, lower: float, rule: DecisionRule) -> str:
    chosen = d.recommended[i]
    if chosen == CONSERVATIVE:
        best = int(d.argmax[i])
        if best == CONSERVATIVE:
            return f"{TREATMENTS[0]} has the highest predicted satisfaction"
        why = (
            "few similar patients received it"
            if not d.supported[i, best]
            else "its benefit is not clearly above the margin"
        )
        return (
            f"{TREATMENTS[0]}: the conservative option is kept; {TREATMENTS[best]} is predicted "
            f"higher but {why}"
        )
    return (
        f"{TREATMENTS[chosen]}: predicted benefit clearly above the less invasive options "
        f"(lower bound {lower:+.2f} over the next choice, margin {rule.margin_of(chosen):+.2f})"
    )


def _support_warnings(d: Decision, i: int, rule: DecisionRule) -> list[str]:
    """One warning per treatment without support: its prediction is an extrapolation."""
    return [
        f"{TREATMENTS[t]}: few patients like this one received it in training (propensity below "
        f"{rule.support_floor:g}); its prediction is an extrapolation and it is not recommended"
        for t in np.flatnonzero(~d.supported[i])
    ]
