"""Per-image baselines: what is normal for containers of one image, learned from its own windows.

Why per image: a `webapp` container that runs wget every two seconds is normal; a `worker` doing the
same is not. Each image key gets a scikit-learn Pipeline (scaler + IsolationForest, fixed
random_state) trained on that image's feature windows in one environment. Images with too few windows
(default < 50) are scored by an environment-wide model instead, and every result says which model
scored it (`model_scope`, `fallback`).

The score (higher = more anomalous) has three parts:
* the IsolationForest anomaly score, -score_samples, in (0, 1]; about 0.35-0.5 for ordinary windows;
* a novelty term for behaviour features outside the range the image showed in training. An
  IsolationForest only splits inside the training range, so a value beyond the training maximum
  lands in the same leaf as the maximum: 50 refused connections from an image that never had one
  would look no stranger than the image's busiest window. The novelty term adds
  `novelty_weight * min(excess, novelty_cap)` per feature, where excess is the distance above
  the training maximum in robust units (scale = max(1.4826 MAD, IQR/1.349, a per-feature floor));
  less activity than usual is left to the forest. Lifecycle features (age, restarts, churn) are left to the forest, so routine restarts and
  redeploys do not trip it.
* an unseen-executable term: `unseen_weight` per executable name in the window that the image never
  ran in training (its vocabulary, learned when `fit` is given the windows' executables). `cat`,
  `id`, `ps` from a web image that only ever ran sh, httpd, wget and sleep is what a window count
  cannot show: three extra processes among thirty look ordinary.

The threshold is calibrated per image from its training scores: the `threshold_quantile` (default
0.99) quantile plus `threshold_margin` (default 0.05). A quantile, not the maximum, keeps it robust to
a few odd windows in training; the margin keeps the ordinary tail of training windows below it.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import RobustScaler, StandardScaler
from sklearn.utils.validation import check_is_fitted

from model.features import FEATURE_NAMES, FeatureWindows
# Image keys, scoring terms, results and explanations live in sklearn-free modules (the daemon
# scores without scikit-learn); re-exported here so every existing import keeps working.
from model.images import ImageRef, normalise_image, parse_image  # noqa: F401
from model.scoring import (BEHAVIOUR_FEATURES, DEFAULT_MIN_WINDOWS, ENVIRONMENT_SCOPE,  # noqa: F401
                           IMAGE_SCOPE, _SCALE_FLOORS, BaselineTerms, ImageRouting, ScoreResult,
                           _describe, _fmt, explain, scale_floors, score_windows)

log = logging.getLogger(__name__)

_PARALLEL_MIN_ROWS = 20_000     # below this, thread start-up costs more than it saves
_FAST_PATH_OK: dict[tuple, bool] = {}   # (sklearn version, forest settings) -> fast path verified
# --------------------------------------------------------------------------- the estimator

class ImageBaseline(BaselineTerms, OutlierMixin, BaseEstimator):
    """Scaler + IsolationForest with a calibrated threshold and robust training statistics.

    scikit-learn conventions: `score_samples` is higher for more normal windows, `decision_function`
    is negative for anomalies, `predict` returns -1 (anomaly) / 1. `anomaly_score` is the
    operator-facing score (higher = stranger) that results and thresholds are expressed in.
    """

    def __init__(self, n_estimators: int = 100, max_samples: int | str = "auto", random_state: int = 0,
                 scaler: str = "standard", threshold_quantile: float = 0.99,
                 threshold_margin: float = 0.05, novelty_weight: float = 0.05,
                 novelty_cap: float = 10.0, unseen_weight: float = 0.1,
                 feature_names: Sequence[str] = FEATURE_NAMES,
                 calibration_max: int = 1024, stats_max: int = 2048, n_jobs: int | None = None,
                 score_threads: int | None = None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.scaler = scaler
        self.threshold_quantile = threshold_quantile
        self.threshold_margin = threshold_margin
        self.novelty_weight = novelty_weight
        self.novelty_cap = novelty_cap
        self.unseen_weight = unseen_weight
        self.feature_names = feature_names
        self.calibration_max = calibration_max
        self.stats_max = stats_max
        self.n_jobs = n_jobs
        self.score_threads = score_threads

    def _make_pipeline(self) -> Pipeline:
        scaler = {"standard": StandardScaler(), "robust": RobustScaler()}.get(self.scaler)
        if scaler is None:
            raise ValueError(f"unknown scaler {self.scaler!r}")
        forest = IsolationForest(n_estimators=self.n_estimators, max_samples=self.max_samples,
                                 contamination="auto", random_state=self.random_state, n_jobs=self.n_jobs)
        return Pipeline([("scale", scaler), ("iforest", forest)])

    def fit(self, X, y=None, executables: Sequence[Sequence[str]] | None = None):  # noqa: ARG002
        """Fit on training windows; `executables` (one collection of names per row) sets the
        image's executable vocabulary, without it the unseen-executable term is off."""
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected (n, {len(self.feature_names)}) matrix, got {X.shape}")
        if X.shape[0] < 2:
            raise ValueError("need at least 2 windows to fit a baseline")
        self.pipeline_ = self._make_pipeline().fit(X)
        self.n_windows_ = int(X.shape[0])
        self.feature_names_in_list_ = list(self.feature_names)
        # robust statistics, used for the novelty term and the plain-words explanation; quantiles
        # from at most `stats_max` evenly spaced windows (plenty for a median), range from all of them
        S = X[_evenly(X.shape[0], self.stats_max)]
        q1, med, q3 = np.percentile(S, [25, 50, 75], axis=0)
        mad = np.median(np.abs(S - med), axis=0)
        self.median_ = med
        self.min_ = X.min(axis=0)
        self.max_ = X.max(axis=0)
        self.scale_ = np.maximum.reduce([1.4826 * mad, (q3 - q1) / 1.349, scale_floors(self.feature_names)])
        self.novelty_mask_ = np.array([f in BEHAVIOUR_FEATURES for f in self.feature_names])
        # sorted tuple, not a set: the pickled model is then byte-identical for the same data
        self.vocabulary_ = (tuple(sorted({e for row in executables for e in row}))
                            if executables is not None else None)
        # calibrate on at most `calibration_max` evenly spaced training windows: the 0.99 quantile of
        # ~1000 scores is as good as of all of them, and fitting stays close to a bare forest's cost
        calib = X[_evenly(X.shape[0], self.calibration_max)]
        self.fit_sklearn_version_ = sklearn.__version__
        self.fast_path_ = self._check_fast_path(calib[:64])
        train_scores = self.anomaly_score(calib)   # training executables are all in the vocabulary
        self.train_score_quantile_ = float(np.quantile(train_scores, self.threshold_quantile))
        self.train_score_median_ = float(np.median(train_scores))
        self.threshold_ = self.train_score_quantile_ + float(self.threshold_margin)
        self.offset_ = -self.threshold_
        return self

    # scoring: novelty, unseen, anomaly_score, robust_z and deviations are BaselineTerms' ------
    def _require_fitted(self) -> None:
        check_is_fitted(self, "pipeline_")

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_leaf_cache", None)          # derived from the trees; rebuilt on first use
        state.pop("_vocab_set", None)           # derived from vocabulary_
        return state

    def _fast_forest_scores(self, X: np.ndarray) -> np.ndarray | None:
        """The forest's score_samples without scikit-learn's per-call joblib dispatch.

        Same arithmetic as IsolationForest (leaf depth + average path length of the leaf's samples,
        averaged over trees, 2**-mean/c(max_samples)); per-leaf values are precomputed once. It reads
        two private forest attributes, so `fit` checks it against score_samples and only uses it when
        they agree to 1e-9; otherwise the public method is used.
        """
        cache = self._forest_leaves(X.shape[1])
        if cache is None:
            return None
        leaves, denom = cache
        Xs = self.pipeline_[:-1].transform(X)
        Xs = np.ascontiguousarray(Xs, dtype=np.float32)
        depths = np.zeros(Xs.shape[0])
        for tree, values, feats in leaves:
            depths += values[tree.apply(Xs if feats is None else np.ascontiguousarray(Xs[:, feats]))]
        if denom == 0:
            return -np.ones(Xs.shape[0])
        return -(2.0 ** (-depths / denom))

    def _forest_leaves(self, n_features: int) -> tuple[list, float] | None:
        """Per tree (tree_, per-node path value, feature subset or None when it is every feature
        in order) and the score's denominator; None when the forest's private attributes are not
        what this expects. Computed once (the fast path's cache); model.compiled exports it."""
        cache = getattr(self, "_leaf_cache", None)
        if cache is not None:
            return cache
        forest = self.pipeline_[-1]
        try:
            from sklearn.ensemble._iforest import _average_path_length
            leaves = [(est.tree_, np.asarray(dpl, float) + np.asarray(apl, float) - 1.0,
                       None if len(f) == n_features and np.array_equal(f, np.arange(n_features)) else np.asarray(f))
                      for est, dpl, apl, f in zip(forest.estimators_, forest._decision_path_lengths,
                                                  forest._average_path_length_per_tree,
                                                  forest.estimators_features_)]
            denom = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
        except (AttributeError, ImportError, TypeError, ValueError):
            return None
        cache = self._leaf_cache = (leaves, denom)
        return cache

    def _check_fast_path(self, probe: np.ndarray) -> bool:
        """Does the fast path give score_samples' exact result with this scikit-learn?

        Checked on the first fit per (scikit-learn version, forest settings) in a process and
        remembered: a property of the library, not of the data, and the check costs a few ms.
        """
        key = (sklearn.__version__, self.max_samples, self.n_estimators)
        known = _FAST_PATH_OK.get(key)
        fast = self._fast_forest_scores(probe)
        if fast is None:
            return False
        if known is None:
            known = _FAST_PATH_OK[key] = bool(
                np.allclose(fast, self.pipeline_.score_samples(probe), rtol=0, atol=1e-9))
            if not known:
                log.info("IsolationForest internals differ from what the fast path expects: using score_samples")
        return known

    def _score_chunk(self, X: np.ndarray) -> np.ndarray:
        # the fast path was verified with the scikit-learn that fitted the model; a model loaded
        # under another version uses the public method
        if getattr(self, "fast_path_", False) and getattr(self, "fit_sklearn_version_", None) == sklearn.__version__:
            fast = self._fast_forest_scores(X)
            if fast is not None:
                return fast
        return self.pipeline_.score_samples(X)

    def _forest_scores(self, X: np.ndarray) -> np.ndarray:
        """Pipeline score_samples; large batches are split by rows over threads.

        The trees' traversal releases the GIL, so on a k-core box k row-chunks score ~k times as fast;
        chunks are scored independently, so the result is identical to one call.
        """
        threads = self.score_threads if self.score_threads is not None else min(os.cpu_count() or 1, 8)
        if threads <= 1 or X.shape[0] < _PARALLEL_MIN_ROWS:
            return self._score_chunk(X)
        bounds = np.linspace(0, X.shape[0], threads + 1).astype(int)
        out = np.empty(X.shape[0])

        def run(i: int) -> None:
            out[bounds[i]:bounds[i + 1]] = self._score_chunk(X[bounds[i]:bounds[i + 1]])

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, range(threads)))
        return out

    def score_samples(self, X) -> np.ndarray:
        return -self.anomaly_score(X)

    def decision_function(self, X) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

def _evenly(n: int, k: int) -> np.ndarray:
    """Indices of at most k evenly spaced rows out of n (all of them when n <= k)."""
    if n <= k:
        return np.arange(n)
    return np.linspace(0, n - 1, k).astype(int)


# --------------------------------------------------------------------------- one environment

def training_order(windows: FeatureWindows) -> np.ndarray:
    """Row order in which `EnvironmentBaselines.fit` trains: by window start, container, host,
    window end. An IsolationForest draws its subsamples by row position, so the same windows
    in another order give another forest. The order windows arrive in is the collector's
    business (a replay's commit chunk, a daemon's polls, a window store's pages); the model
    must be the same whichever collected them."""
    return np.lexsort((np.asarray(windows.window_end, dtype=float),
                       np.asarray(windows.host, dtype=object),
                       np.asarray(windows.container_id, dtype=object),
                       np.asarray(windows.window_start, dtype=float)))


def _fit_one(key: str, X: np.ndarray, params: dict[str, Any],
             executables: list | None = None) -> tuple[str, ImageBaseline]:
    """Module-level so joblib (loky, Dask) can ship it to workers."""
    return key, ImageBaseline(**params).fit(X, executables=executables)


class EnvironmentBaselines(ImageRouting):
    """All baselines of one environment: one per image key, plus the environment-wide fallback.

    No global state: everything a score needs (keys, thresholds, training statistics) is on this
    object, which the model store persists one file per image.
    """

    def __init__(self, environment: str = "default", min_windows: int = DEFAULT_MIN_WINDOWS,
                 grouping: str = "tag", params: dict[str, Any] | None = None):
        self.environment = environment
        self.min_windows = int(min_windows)
        self.grouping = grouping
        self.params = dict(params or {})
        self.models: dict[str, ImageBaseline] = {}
        self.fallback: ImageBaseline | None = None
        self.window_counts: dict[str, int] = {}

    def group(self, windows: FeatureWindows) -> dict[str, np.ndarray]:
        """Row indices per image key."""
        keys = np.array([self.key_of(i) for i in windows.image], dtype=object)
        return {k: np.flatnonzero(keys == k) for k in sorted(set(keys.tolist()))}

    def fit(self, windows: FeatureWindows, *, n_jobs: int | None = None, backend: str | None = None,
            progress: Callable[[str], None] | None = None) -> "EnvironmentBaselines":
        """Fit the fallback on every window and one model per image with >= min_windows windows.

        Images train in parallel through joblib; `backend` picks joblib's backend ("loky",
        "threading", "dask" with an active dask.distributed Client, ...), None keeps the default.
        """
        import joblib

        if len(windows) < 2:
            raise ValueError("no windows to train on")
        windows = windows.select(training_order(windows))
        groups = self.group(windows)
        self.window_counts = {k: int(v.size) for k, v in groups.items()}
        exes = windows.executables or None
        jobs = [("__environment__", windows.X, exes)]
        for key, idx in groups.items():
            if idx.size >= self.min_windows:
                jobs.append((key, windows.X[idx], [exes[i] for i in idx] if exes else None))
            else:
                log.info("%s: %d windows < %d, scored by the environment-wide model",
                         key, idx.size, self.min_windows)
        ctx = joblib.parallel_config(backend=backend) if backend else _nullcontext()
        with ctx:
            parallel = joblib.Parallel(n_jobs=n_jobs if n_jobs is not None else 1, return_as="generator")
            fitted = {}
            for key, model in parallel(joblib.delayed(_fit_one)(k, X, self.params, e) for k, X, e in jobs):
                fitted[key] = model
                if progress:
                    progress(key)
        self.fallback = fitted.pop("__environment__")
        self.models = dict(sorted(fitted.items()))
        return self

    def score(self, windows: FeatureWindows, top: int = 3, explain_all: bool = False) -> list[ScoreResult]:
        """Score every window with its image's model (or the fallback) and explain the anomalies
        (model.scoring.score_windows, shared with the compiled scorer).

        Deviations are worked out for anomalous windows (all windows with `explain_all`): they cost
        Python time per row, and a normal window needs no story."""
        return score_windows(self, windows, top=top, explain_all=explain_all)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
