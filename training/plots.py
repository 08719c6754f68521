"""The evaluation report's figures (matplotlib `Figure`s rendered with Agg; no pyplot state):
ROC and reliability of the observed arm, predicted vs true P(satisfied), the recommended mix per
diagnosis, propensity overlap. Aggregates only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve
from spinecast.datasets.schema import TREATMENTS

from spinecast.metrics import ECE_BINS
from spinecast.metrics import auroc as _auroc


def plot_roc(path: Path, y: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    fig = Figure(figsize=(5.5, 5))  # a bare Figure renders with Agg and touches no pyplot state
    ax = fig.subplots()
    if 0 < y.sum() < len(y):
        for name, p in scores.items():
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {_auroc(p, y):.3f})")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC needs both satisfied and unsatisfied rows", ha="center")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC, satisfied at 12 months",
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_reliability(path: Path, y: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    for name, p in scores.items():
        if len(y):
            observed, predicted = calibration_curve(y, p, n_bins=ECE_BINS, strategy="uniform")
            ax.plot(predicted, observed, marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.set(
        xlabel=f"predicted P(satisfied), {ECE_BINS} equal-width bins",
        ylabel="observed satisfied rate",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        title="Reliability diagram",
    )
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_counterfactual(path: Path, predicted: np.ndarray, true_p: np.ndarray) -> None:
    """Predicted vs true P(satisfied) of every patient under every treatment, one panel each."""
    fig = Figure(
        figsize=(10, 9), layout="constrained"
    )  # a bare Figure renders with Agg and touches no pyplot state
    for k, ax in enumerate(fig.subplots(2, 2).ravel()):
        ax.hexbin(
            true_p[:, k],
            predicted[:, k],
            gridsize=30,
            extent=(0, 1, 0, 1),
            mincnt=1,
            cmap="viridis",
        )
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        rmse = np.sqrt(np.mean((predicted[:, k] - true_p[:, k]) ** 2))
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="true P(satisfied)",
            ylabel="predicted P(satisfied)",
            title=f"{TREATMENTS[k]}: RMSE {rmse:.3f}",
        )
    fig.suptitle("Counterfactual accuracy: every patient under every treatment")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_mix_by_diagnosis(path: Path, table: list[dict]) -> None:
    """Per diagnosis, the rule's recommended mix above the oracle's (where a truth file exists)."""
    bars = [
        (f"{r['diagnosis']} ({r['n']:,}): {who}", r[key])
        for r in table
        if r["n"]
        for who, key in (("model rule", "recommended_mix"), ("oracle", "oracle_mix"))
        if r[key]
    ]
    fig = Figure(figsize=(9, 0.45 * len(bars) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(bars))[::-1]
    left = np.zeros(len(bars))
    for t in TREATMENTS:
        share = np.array([mix[t] for _, mix in bars])
        ax.barh(y, share, left=left, label=t)
        left += share
    ax.set_yticks(y, [label for label, _ in bars])
    ax.set(
        xlim=(0, 1),
        xlabel="share of patients",
        title="Recommended vs oracle treatment mix by diagnosis",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_propensity(path: Path, overlap: dict) -> None:
    """Cross-fitted propensity of each treatment among those who received it and those who did
    not."""
    fig = Figure(figsize=(10, 8), layout="constrained")
    edges = np.asarray(overlap["edges"])
    for ax, (t, row) in zip(fig.subplots(2, 2).ravel(), overlap["treatments"].items()):
        for key, label in (
            ("histogram_received", f"received it ({row['received']:,})"),
            ("histogram_others", "did not"),
        ):
            counts = np.asarray(row[key], dtype=float)
            if counts.sum():
                ax.stairs(counts / counts.sum(), edges, label=label)
        if not row["received"]:
            ax.text(0.5, 0.5, "no patient received it", ha="center", transform=ax.transAxes)
        ax.axvline(
            overlap["floor"], ls=":", color="grey", label=f"support floor {overlap['floor']:g}"
        )
        ax.set(xlim=(0, 1), xlabel=f"P({t} | chart)", ylabel="share of patients", title=t)
        ax.legend(fontsize=8)
    fig.suptitle("Propensity overlap (cross-fitted)")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_decision_curve(path: Path, curve: dict) -> None:
    """Net benefit of the model against acting on everyone and on no one, across thresholds."""
    t = np.asarray(curve["thresholds"])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.plot(t, curve["model"], label="model: act if P(satisfied) >= threshold")
    ax.plot(t, curve["treat_all"], ls="--", color="grey", label="act on all")
    ax.plot(t, curve["treat_none"], ls=":", color="black", label="act on none")
    top = max(max(curve["model"]), max(curve["treat_all"]), 0.0)
    ax.set(
        xlim=(t[0], t[-1]),
        ylim=(-0.05, top + 0.05),
        xlabel="threshold probability of satisfaction",
        ylabel="net benefit",
        title="Decision curve, observed treatment",
    )
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
