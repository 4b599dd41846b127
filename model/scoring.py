"""How a fitted baseline turns a window into a score and words, without scikit-learn.

Why a module of its own: the daemon only scores. The forest part of a score is a walk down trees
(model/compiled.py does it from plain arrays); everything after it, the novelty and
unseen-executable terms, the threshold test, the deviations and their explanation and the
ScoreResult, is numpy arithmetic that is written once here and shared by the scikit-learn
estimator (`model.baseline.ImageBaseline`) and the compiled scorer (`model.compiled`). One copy
of each float operation, in one order, is what keeps their scores bit-identical.

`BaselineTerms` is the shared part of a per-image model; `score_windows` is the per-image routing
and result building of `EnvironmentBaselines.score` for anything with the same few attributes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from model.images import normalise_image

if TYPE_CHECKING:   # model.features pulls pandas in; scoring needs only the windows' fields
    from model.features import FeatureWindows

DEFAULT_MIN_WINDOWS = 50
ENVIRONMENT_SCOPE = "environment"
IMAGE_SCOPE = "image"

#: Features whose values outside the training range add to the novelty term.
BEHAVIOUR_FEATURES: tuple[str, ...] = (
    "processes_started", "distinct_executables", "shell_processes", "network_tool_processes",
    "location_discovery_processes", "outbound_conns", "failed_conns", "distinct_remote_addrs",
    "distinct_remote_ports", "distinct_domains", "dns_queries", "dns_label_entropy_mean",
    "nxdomain_share", "http_requests", "geo_service_contacts", "bytes_out", "bytes_in",
    "public_conn_share", "exec_sessions",
)

#: Smallest scale (robust units) per feature, so a feature that never varied in training does not
#: turn a difference of one into an infinite z-score. Counts: 1; shares: 0.1; entropy: 0.5 bit.
_SCALE_FLOORS: dict[str, float] = {
    "dns_label_entropy_mean": 0.5, "nxdomain_share": 0.1, "public_conn_share": 0.1,
    "bytes_out": 200.0, "bytes_in": 200.0, "container_age_s": 60.0,
}


def scale_floors(feature_names: Sequence[str]) -> np.ndarray:
    return np.array([_SCALE_FLOORS.get(f, 1.0) for f in feature_names], dtype=float)


# --------------------------------------------------------------------------- words

def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def explain(deviations: list[dict[str, Any]]) -> str:
    """Plain words: 'distinct_remote_ports=25, baseline median 3 (training range 1-3)'.

    Takes every entry `score()` puts in a window's deviations, not only the per-feature ones:
    an `unseen_executables` entry (executable names, no median, no training range) reads as
    'executables never seen for this image in training: nc', and an entry missing the baseline
    statistics as plain 'feature=value', so a caller can explain any deviation list it holds.
    """
    if not deviations:
        return "no single feature stands out; the combination is unusual for this image"
    return "; ".join(_describe(d) for d in deviations)


def _describe(d: dict[str, Any]) -> str:
    """One deviation in words (see explain)."""
    if d.get("names"):
        return f"executables never seen for this image in training: {', '.join(map(str, d['names']))}"
    text = f"{d.get('feature', '?')}={_fmt(d.get('value', 0))}"
    if d.get("baseline_median") is not None:
        text += f", baseline median {_fmt(d['baseline_median'])}"
    if d.get("training_range"):
        lo, hi = d["training_range"]
        text += f" (training range {_fmt(lo)}-{_fmt(hi)})"
    return text


# --------------------------------------------------------------------------- results

@dataclass
class ScoreResult:
    """One scored window: what an alert carries."""

    container_id: str
    image: str
    image_key: str
    environment: str
    window_start: float
    window_end: float
    score: float
    threshold: float
    is_anomaly: bool
    fallback: bool
    model_scope: str           # "image" or "environment"
    explanation: str
    deviations: list[dict[str, Any]] = field(default_factory=list)
    container_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- one image's terms

class BaselineTerms:
    """The parts of a per-image score that are not the forest, and the explanation.

    A subclass provides `_forest_scores(X)` (IsolationForest score_samples: negative, higher =
    more normal), `_require_fitted()`, and the fitted attributes read here: `max_`, `min_`,
    `median_`, `scale_`, `novelty_mask_`, `vocabulary_` (sorted tuple or None), `threshold_`,
    `novelty_weight`, `novelty_cap`, `unseen_weight`, `feature_names`.
    """

    def _require_fitted(self) -> None:
        """Raise when the model is not fitted (the estimator checks; compiled models always are)."""

    def _forest_scores(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def novelty(self, X) -> np.ndarray:
        """Per-window sum of capped excess outside the training range, in robust units."""
        self._require_fitted()
        X = np.asarray(X, dtype=float)
        excess = X - self.max_
        np.maximum(excess, 0.0, out=excess)
        excess /= self.scale_
        np.minimum(excess, self.novelty_cap, out=excess)
        return excess[:, self.novelty_mask_].sum(axis=1)

    def unseen(self, executables: Sequence[Sequence[str]]) -> list[list[str]]:
        """Per window: executable names the image never ran in training (empty without vocabulary)."""
        if getattr(self, "vocabulary_", None) is None:
            return [[] for _ in executables]
        vocab = getattr(self, "_vocab_set", None)
        if vocab is None:
            vocab = self._vocab_set = frozenset(self.vocabulary_)
        return [sorted(set(row) - vocab) for row in executables]

    def anomaly_score(self, X, executables: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """Higher = stranger. IsolationForest score plus the novelty terms (see model/baseline.py)."""
        self._require_fitted()
        X = np.asarray(X, dtype=float)
        base = -self._forest_scores(X)
        if self.novelty_weight:
            base = base + self.novelty_weight * self.novelty(X)
        if executables is not None and self.unseen_weight and getattr(self, "vocabulary_", None) is not None:
            n_unseen = np.array([min(len(u), self.novelty_cap) for u in self.unseen(executables)], dtype=float)
            base = base + self.unseen_weight * n_unseen
        return base

    def robust_z(self, X) -> np.ndarray:
        self._require_fitted()
        return (np.asarray(X, dtype=float) - self.median_) / self.scale_

    def deviations(self, x: np.ndarray, top: int = 3, min_abs_z: float = 1.0,
                   above_only: bool = False) -> list[dict[str, Any]]:
        """The features of one window that deviate most from this baseline's training data.

        `above_only` keeps only features above the baseline: for the environment-wide fallback,
        whose medians mix every image, "less than usual" describes other images, not this one."""
        x = np.asarray(x, dtype=float)
        z = self.robust_z(x[None, :])[0]
        if above_only:
            z = np.where(z > 0, z, 0.0)
        # values above anything seen in training first (that is what is new), then by |robust z|
        above = x > self.max_
        order = np.lexsort((-np.abs(z), ~above))
        out = []
        for i in order[:top]:
            if abs(z[i]) < min_abs_z:
                break
            out.append({"feature": self.feature_names[i], "value": float(x[i]),
                        "baseline_median": float(self.median_[i]), "baseline": float(self.median_[i]),
                        "robust_z": round(float(z[i]), 2),
                        "training_range": [float(self.min_[i]), float(self.max_[i])]})
        return out


# --------------------------------------------------------------------------- one environment

class _Model(Protocol):
    threshold_: float

    def anomaly_score(self, X, executables=None) -> np.ndarray: ...
    def unseen(self, executables) -> list[list[str]]: ...
    def deviations(self, x, top: int = 3, min_abs_z: float = 1.0,
                   above_only: bool = False) -> list[dict[str, Any]]: ...


class ImageRouting:
    """Which model scores an image: its own (by image key), else the environment-wide fallback.
    One implementation for the scikit-learn baselines and their compiled form."""

    grouping: str
    models: dict[str, Any]
    fallback: Any

    def key_of(self, image: str) -> str:
        return normalise_image(image, grouping=self.grouping)

    def model_for(self, image: str) -> tuple[str, Any, bool]:
        """(image key, model, scored by the fallback)."""
        key = self.key_of(image)
        m = self.models.get(key)
        if m is not None:
            return key, m, False
        if self.fallback is None:
            raise RuntimeError(f"no model for {key} and no environment-wide fallback")
        return key, self.fallback, True


class _Baselines(Protocol):
    environment: str
    min_windows: int
    window_counts: dict[str, int]

    def key_of(self, image: str) -> str: ...
    def model_for(self, image: str) -> tuple[str, _Model, bool]: ...


def score_windows(baselines: _Baselines, windows: "FeatureWindows", top: int = 3,
                  explain_all: bool = False) -> list[ScoreResult]:
    """Score every window with its image's model (or the fallback) and explain the anomalies.

    Deviations are worked out for anomalous windows (all windows with `explain_all`): they cost
    Python time per row, and a normal window needs no story."""
    results: list[ScoreResult | None] = [None] * len(windows)
    keys = [baselines.key_of(i) for i in windows.image]
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    for key, rows in by_key.items():
        _, model, is_fallback = baselines.model_for(windows.image[rows[0]])
        X = windows.X[rows]
        exes = [windows.executables[r] for r in rows] if windows.executables else None
        scores = model.anomaly_score(X, exes)
        unseen = model.unseen(exes) if exes is not None else [[] for _ in rows]
        for j, r in enumerate(rows):
            s = float(scores[j])
            anomalous = s > model.threshold_
            devs = ([{"feature": "unseen_executables", "value": len(unseen[j]),
                      "names": unseen[j]}] if unseen[j] else [])
            if anomalous or explain_all:
                devs += model.deviations(X[j], top=top, above_only=is_fallback)
                text = explain(devs)
            else:
                text = "; ".join(([explain(devs)] if devs else []) + ["within this image's baseline"])
            if is_fallback:
                text = (f"{key} has {baselines.window_counts.get(key, 0)} training windows "
                        f"(< {baselines.min_windows}): scored by the environment-wide model of "
                        f"{baselines.environment!r}; ") + text
            results[r] = ScoreResult(
                container_id=windows.container_id[r], image=windows.image[r], image_key=key,
                environment=baselines.environment, window_start=float(windows.window_start[r]),
                window_end=float(windows.window_end[r]), score=round(s, 6),
                threshold=round(float(model.threshold_), 6), is_anomaly=bool(anomalous),
                fallback=is_fallback, model_scope=ENVIRONMENT_SCOPE if is_fallback else IMAGE_SCOPE,
                explanation=text, deviations=devs,
                container_name=windows.name[r] if windows.name else "")
    return [r for r in results if r is not None]
