"""Per-image baselines as plain numpy arrays: scoring without scikit-learn in the process.

Why: the daemon only scores, and `import sklearn.ensemble` (with the SciPy it pulls in) is about
195 MiB of its resident memory, more than the rest of the daemon at 20,000 Zeek lines/s. A fitted
IsolationForest is a set of shallow binary trees; scoring a window is a walk from each root to a
leaf and a sum of per-leaf path values, which `ImageBaseline`'s fast path already does from the
trees' arrays. This module exports those arrays once (`compile_baselines`), saves them beside the
joblib files (`to_npz_bytes`, read back with `allow_pickle=False`: loading runs no code) and
scores from them in numpy.

Bit-identical by construction, checked by tests/test_compiled.py with `==`:
* the scaler's transform is the same float64 subtraction and division as scikit-learn's
  (StandardScaler: mean_, scale_; RobustScaler: center_, scale_), then a cast to float32 as
  before `tree.apply`;
* at each node a row goes left when its float32 value, compared as a float64 with the node's
  float64 threshold, is `<=` it (NaN: the node's missing_go_to_left), exactly as `Tree.apply`;
* per-leaf values are the fast path's (decision path length + average path length - 1), summed
  in tree order into float64 zeros, then `2 ** (-depths / denom)`;
* everything after the forest (novelty, unseen executables, threshold test, deviations, words,
  ScoreResult) is `model.scoring`, the same code the estimator runs.
`compile_model` also checks a compiled forest against scikit-learn's own `score_samples` (to
1e-9) and the estimator's fast path (exactly) on probe rows and refuses to compile otherwise.

The descent is vectorised over every (tree, row) pair, one level per step: isolation trees of
256 samples are at most 8 levels deep. Leaves point at themselves, so a row that reached its leaf
stays there for the remaining steps.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from model.scoring import (DEFAULT_MIN_WINDOWS, BaselineTerms, ImageRouting, ScoreResult,
                           score_windows)

if TYPE_CHECKING:   # scikit-learn only where a fitted estimator is compiled
    from model.baseline import EnvironmentBaselines, ImageBaseline
    from model.features import FeatureWindows

COMPILED_FORMAT = 1
_ROWS_PER_CHUNK = 2048     # (trees x rows) arrays per level: 100 x 2048 x <= 8 B = <= 1.6 MiB each
_INT_ARRAYS = ("left", "right", "feature", "roots")
_FLOAT_ARRAYS = ("threshold", "value", "max_", "min_", "median_", "scale_")
_SCALARS = ("denom", "threshold_", "novelty_weight", "novelty_cap", "unseen_weight")


class CompileError(ValueError):
    """A fitted baseline cannot be expressed (exactly) as arrays, or a compiled file is malformed."""


class CompiledModel(BaselineTerms):
    """One image's baseline: the forest as one node table over all trees, the scaler's transform
    and the training statistics the score and its explanation read (see BaselineTerms)."""

    def __init__(self, *, left: np.ndarray, right: np.ndarray, feature: np.ndarray,
                 threshold: np.ndarray, missing_left: np.ndarray, value: np.ndarray,
                 roots: np.ndarray, max_depth: int, denom: float,
                 scaler_center: np.ndarray | None, scaler_scale: np.ndarray | None,
                 max_: np.ndarray, min_: np.ndarray, median_: np.ndarray, scale_: np.ndarray,
                 novelty_mask_: np.ndarray, threshold_: float, novelty_weight: float,
                 novelty_cap: float, unseen_weight: float, feature_names: Sequence[str],
                 vocabulary_: Sequence[str] | None, n_windows_: int) -> None:
        # Memory: a daemon holds one of these per image, so the node table is kept small: int32
        # children side by side ([left, right] per node: one gather per level picks the child),
        # int16 features, float64 threshold and value (exactness), no missing-value column
        # unless a node sends NaN left. About 27 bytes a node, 0.4 MiB for 100 trees of 256.
        left, right = np.asarray(left), np.asarray(right)
        if left.shape != right.shape or left.ndim != 1:
            raise CompileError("node arrays differ in length")
        if left.size >= 2**30 or len(feature_names) >= 2**15:
            raise CompileError("forest too large for the compiled node table")
        self._children = np.stack([left, right], axis=1).astype(np.int32).ravel()
        self.feature = np.asarray(feature).astype(np.int16)
        if not np.array_equal(self.feature, np.asarray(feature)):
            raise CompileError("a node splits on a feature the model does not have")
        self.threshold = np.asarray(threshold, dtype=np.float64)
        missing = np.asarray(missing_left, dtype=bool)
        self.missing_left = missing if missing.any() else None
        self._n_nodes = left.size
        self._missing_size = missing.size
        self.value = np.asarray(value, dtype=np.float64)
        self.roots = np.asarray(roots).astype(np.int32)
        self.max_depth = int(max_depth)
        self.denom = float(denom)
        self.scaler_center = None if scaler_center is None else np.asarray(scaler_center, np.float64)
        self.scaler_scale = None if scaler_scale is None else np.asarray(scaler_scale, np.float64)
        self.max_ = np.asarray(max_, dtype=np.float64)
        self.min_ = np.asarray(min_, dtype=np.float64)
        self.median_ = np.asarray(median_, dtype=np.float64)
        self.scale_ = np.asarray(scale_, dtype=np.float64)
        self.novelty_mask_ = np.asarray(novelty_mask_, dtype=bool)
        self.threshold_ = float(threshold_)
        self.novelty_weight = float(novelty_weight)
        self.novelty_cap = float(novelty_cap)
        self.unseen_weight = float(unseen_weight)
        self.feature_names = tuple(feature_names)
        self.vocabulary_ = None if vocabulary_ is None else tuple(vocabulary_)
        self.n_windows_ = int(n_windows_)
        self._validate()

    @property
    def left(self) -> np.ndarray:
        return self._children[0::2]

    @property
    def right(self) -> np.ndarray:
        return self._children[1::2]

    @property
    def n_trees(self) -> int:
        return int(self.roots.size)

    def _validate(self) -> None:
        """Refuse arrays that would index out of range or disagree in length (a malformed file)."""
        n, f = self._n_nodes, len(self.feature_names)
        if not (self.feature.size == self.threshold.size == self.value.size
                == self._missing_size == n) or n == 0:
            raise CompileError("node arrays differ in length")
        for name in ("left", "right", "roots"):
            a = getattr(self, name)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise CompileError(f"{name} points outside the node table")
        if self.feature.min() < 0 or self.feature.max() >= f:
            raise CompileError("a node splits on a feature the model does not have")
        for name in ("max_", "min_", "median_", "scale_", "novelty_mask_"):
            if getattr(self, name).shape != (f,):
                raise CompileError(f"{name} has shape {getattr(self, name).shape}, expected ({f},)")
        for name in ("scaler_center", "scaler_scale"):
            a = getattr(self, name)
            if a is not None and a.shape != (f,):
                raise CompileError(f"{name} has shape {a.shape}, expected ({f},)")
        if not 0 <= self.max_depth <= 64:
            raise CompileError(f"tree depth {self.max_depth} out of range")

    # the forest ------------------------------------------------------------------------------
    def _transform(self, X: np.ndarray) -> np.ndarray:
        """The scaler's transform: scikit-learn's in-place float64 `X -= center; X /= scale` on a
        copy, then float32 as `tree.apply` takes it."""
        Xt = np.array(X, dtype=np.float64, copy=True)
        if self.scaler_center is not None:
            Xt -= self.scaler_center
        if self.scaler_scale is not None:
            Xt /= self.scaler_scale
        return np.ascontiguousarray(Xt, dtype=np.float32)

    def _depths(self, Xs: np.ndarray) -> np.ndarray:
        """Sum over trees, in tree order, of the leaf value each row of float32 `Xs` lands in."""
        m, f = Xs.shape
        flat = Xs.ravel()
        row_base = (np.arange(m, dtype=np.intp) * f)[None, :]
        node = np.repeat(self.roots[:, None], m, axis=1)
        has_nan = self.missing_left is not None and bool(np.isnan(flat).any())
        children = self._children
        for _ in range(self.max_depth):
            x = flat[row_base + self.feature[node]]
            go_right = ~(x <= self.threshold[node])     # float32 promoted to float64, as in C
            if has_nan:
                go_right &= ~(np.isnan(x) & self.missing_left[node])
            node = children[2 * node + go_right]
        leaf_values = self.value[node]
        depths = np.zeros(m)
        for t in range(leaf_values.shape[0]):
            depths += leaf_values[t]
        return depths

    def _forest_scores(self, X: np.ndarray) -> np.ndarray:
        """IsolationForest.score_samples (negative; higher = more normal) from the arrays."""
        Xs = self._transform(X)
        n = Xs.shape[0]
        depths = np.empty(n)
        starts = range(0, n, _ROWS_PER_CHUNK)

        def one(a: int) -> None:
            depths[a:a + _ROWS_PER_CHUNK] = self._depths(Xs[a:a + _ROWS_PER_CHUNK])

        threads = min(os.cpu_count() or 1, 8, len(starts))
        if threads > 1:
            # numpy's gathers and comparisons release the GIL: chunks score in parallel, each
            # on its own rows, so the result is the one loop's
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(one, starts))
        else:
            for a in starts:
                one(a)
        if self.denom == 0:
            return -np.ones(n)
        return -(2.0 ** (-depths / self.denom))

    # files -----------------------------------------------------------------------------------
    def to_npz_bytes(self) -> bytes:
        """The model as an .npz (np.savez's format, deterministic bytes): numbers as arrays,
        names as one JSON byte array."""
        meta = {"format": COMPILED_FORMAT, "feature_names": list(self.feature_names),
                "vocabulary": None if self.vocabulary_ is None else list(self.vocabulary_),
                "max_depth": self.max_depth, "n_windows": self.n_windows_,
                "scaler_center": self.scaler_center is not None,
                "scaler_scale": self.scaler_scale is not None}
        arrays: dict[str, np.ndarray] = {
            "meta_json": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)}
        for name in _INT_ARRAYS:
            arrays[name] = getattr(self, name).astype(np.int32)
        for name in _FLOAT_ARRAYS:
            arrays[name] = getattr(self, name)
        arrays["missing_left"] = (np.zeros(self._n_nodes, np.uint8) if self.missing_left is None
                                  else self.missing_left.astype(np.uint8))
        arrays["novelty_mask_"] = self.novelty_mask_.astype(np.uint8)
        for name in ("scaler_center", "scaler_scale"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        arrays["scalars"] = np.array([getattr(self, s) for s in _SCALARS], dtype=np.float64)
        return _npz_bytes(arrays)

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "CompiledModel":
        """Read `to_npz_bytes` output; no pickles (allow_pickle=False), shapes checked."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays.pop("meta_json").tobytes().decode())
            if meta.get("format") != COMPILED_FORMAT:
                raise CompileError(f"compiled model format {meta.get('format')} != {COMPILED_FORMAT}")
            scalars = dict(zip(_SCALARS, map(float, arrays.pop("scalars"))))
            return cls(**{k: arrays[k] for k in _INT_ARRAYS + _FLOAT_ARRAYS},
                       missing_left=arrays["missing_left"], novelty_mask_=arrays["novelty_mask_"],
                       scaler_center=arrays["scaler_center"] if meta["scaler_center"] else None,
                       scaler_scale=arrays["scaler_scale"] if meta["scaler_scale"] else None,
                       max_depth=meta["max_depth"], n_windows_=meta["n_windows"],
                       feature_names=meta["feature_names"], vocabulary_=meta["vocabulary"],
                       **scalars)
        except CompileError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise CompileError(f"malformed compiled model: {exc}") from exc


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What np.savez writes (a zip of .npy members, np.load reads it), with a fixed member time:
    the same model gives the same bytes, so the same windows give the same sha256 in the
    manifest, as the joblib files do (np.savez stamps members with the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


class CompiledBaselines(ImageRouting):
    """All compiled baselines of one environment, with EnvironmentBaselines' scoring contract:
    `score(windows, top=3, explain_all=False) -> list[ScoreResult]`, the same image keys and
    the same fallback to the environment-wide model (said on every result it scores)."""

    def __init__(self, environment: str = "default", min_windows: int = DEFAULT_MIN_WINDOWS,
                 grouping: str = "tag", params: dict[str, Any] | None = None) -> None:
        self.environment = environment
        self.min_windows = int(min_windows)
        self.grouping = grouping
        self.params = dict(params or {})
        self.models: dict[str, CompiledModel] = {}
        self.fallback: CompiledModel | None = None
        self.window_counts: dict[str, int] = {}
        self.version = ""

    def score(self, windows: "FeatureWindows", top: int = 3, explain_all: bool = False) -> list[ScoreResult]:
        """Score every window with its image's model (or the fallback): model.scoring.score_windows."""
        return score_windows(self, windows, top=top, explain_all=explain_all)


# --------------------------------------------------------------------------- compiling

def _scaler_arrays(model: "ImageBaseline") -> tuple[np.ndarray | None, np.ndarray | None]:
    """(center, scale) of the pipeline's one scaler step, None where the step skips it."""
    from sklearn.preprocessing import RobustScaler, StandardScaler

    steps = list(model.pipeline_[:-1].named_steps.values())
    if len(steps) != 1:
        raise CompileError(f"expected one scaler before the forest, got {len(steps)} steps")
    sc = steps[0]
    if isinstance(sc, StandardScaler):
        return (sc.mean_ if sc.with_mean else None), (sc.scale_ if sc.with_std else None)
    if isinstance(sc, RobustScaler):
        return (sc.center_ if sc.with_centering else None), (sc.scale_ if sc.with_scaling else None)
    raise CompileError(f"cannot compile a {type(sc).__name__} step")


def _probe(model: "ImageBaseline") -> np.ndarray:
    """Rows around and beyond the training range, to check a compiled forest against the estimator."""
    lo, hi, med, sc = model.min_, model.max_, model.median_, model.scale_
    rng = np.random.default_rng(0)
    spread = rng.uniform(lo - sc, hi + sc, size=(59, lo.size))
    return np.vstack([lo, med, hi, hi + sc, lo - sc, spread])


def compile_model(model: "ImageBaseline") -> CompiledModel:
    """The arrays of a fitted ImageBaseline; checked on probe rows against scikit-learn's
    score_samples (1e-9) and the estimator's fast path (exact)."""
    model._require_fitted()
    n_features = len(model.feature_names)
    cache = model._forest_leaves(n_features)
    if cache is None:
        raise CompileError("the forest's internals are not what the compiled scorer reads")
    leaves, denom = cache
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("left", "right", "feature", "threshold", "missing", "value")}
    roots, offset, depth = [], 0, 0
    for tree, values, feats in leaves:
        cl = np.asarray(tree.children_left, dtype=np.intp)
        cr = np.asarray(tree.children_right, dtype=np.intp)
        n = cl.size
        leaf = cl < 0
        own = np.arange(n, dtype=np.intp) + offset
        local_f = np.where(leaf, 0, np.asarray(tree.feature, dtype=np.intp))
        parts["left"].append(np.where(leaf, own, cl + offset))
        parts["right"].append(np.where(leaf, own, cr + offset))
        parts["feature"].append(local_f if feats is None else np.asarray(feats, np.intp)[local_f])
        parts["threshold"].append(np.where(leaf, 0.0, np.asarray(tree.threshold, dtype=np.float64)))
        mgl = getattr(tree, "missing_go_to_left", None)
        parts["missing"].append(np.zeros(n, bool) if mgl is None else np.asarray(mgl, dtype=bool) & ~leaf)
        if values.shape != (n,):
            raise CompileError("per-leaf values do not match the tree")
        parts["value"].append(values)
        roots.append(offset)
        offset += n
        depth = max(depth, int(tree.max_depth))
    center, scale = _scaler_arrays(model)
    cm = CompiledModel(
        left=np.concatenate(parts["left"]), right=np.concatenate(parts["right"]),
        feature=np.concatenate(parts["feature"]), threshold=np.concatenate(parts["threshold"]),
        missing_left=np.concatenate(parts["missing"]), value=np.concatenate(parts["value"]),
        roots=np.array(roots, dtype=np.intp), max_depth=depth, denom=denom,
        scaler_center=center, scaler_scale=scale, max_=model.max_, min_=model.min_,
        median_=model.median_, scale_=model.scale_, novelty_mask_=model.novelty_mask_,
        threshold_=model.threshold_, novelty_weight=model.novelty_weight,
        novelty_cap=model.novelty_cap, unseen_weight=model.unseen_weight,
        feature_names=model.feature_names, vocabulary_=getattr(model, "vocabulary_", None),
        n_windows_=model.n_windows_)
    probe = _probe(model)
    ours = cm._forest_scores(probe)
    if not np.allclose(ours, model.pipeline_.score_samples(probe), rtol=0, atol=1e-9):
        raise CompileError("compiled forest disagrees with scikit-learn's score_samples")
    fast = model._fast_forest_scores(probe)
    if fast is not None and not np.array_equal(ours, fast):
        raise CompileError("compiled forest is not bit-identical to the estimator's fast path")
    return cm


def compile_baselines(eb: "EnvironmentBaselines") -> CompiledBaselines:
    """Every model of a fitted EnvironmentBaselines compiled; the destinations each image
    contacted in training (`misuse_baseline`, when set) ride along as they do on `eb`."""
    if eb.fallback is None:
        raise ValueError("baselines are not fitted")
    cb = CompiledBaselines(eb.environment, min_windows=eb.min_windows, grouping=eb.grouping,
                           params=eb.params)
    cb.window_counts = dict(eb.window_counts)
    cb.fallback = compile_model(eb.fallback)
    cb.models = {k: compile_model(m) for k, m in sorted(eb.models.items())}
    cb.version = getattr(eb, "version", "") or ""
    if getattr(eb, "misuse_baseline", None) is not None:
        cb.misuse_baseline = eb.misuse_baseline      # type: ignore[attr-defined]
    return cb
