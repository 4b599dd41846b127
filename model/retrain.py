"""Retraining per environment from stored windows, with a report per image.

Why a report: a new baseline silently absorbing a compromise is the classic failure of anomaly
detection. Each retrain says, per image, how many windows it used, its new threshold, and how far
each feature's median moved against the previous version (in the previous version's robust units),
so an operator sees "webapp: distinct_remote_addrs median 3 -> 9" before trusting the new model.

Images train in parallel through joblib. The backend is configurable: "loky" (processes, default
for n_jobs > 1), "threading", or "dask" — for the latter create a dask.distributed Client first
(`Client(address)` or a LocalCluster); joblib's Dask backend sends each image's fit to the cluster.

The daemon retrains in a child process (`retrain_in_child`, which runs `python -m model.retrain`):
fitting needs scikit-learn, and importing it would keep ~195 MiB in the daemon for good. The child
reads the window store by its path, saves the new version (with its compiled files) and prints
the report as JSON; the daemon then loads the compiled version. So this module imports scikit-learn
only inside `retrain`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from model.scoring import DEFAULT_MIN_WINDOWS
from model.store import FALLBACK_KEY, ModelStore, UntrustedModelError
from model.windowstore import WindowStore

log = logging.getLogger(__name__)


@dataclass
class ImageReport:
    image_key: str
    scope: str                       # "image" or "environment" (fallback) or "fallback-only"
    windows: int
    threshold: float | None
    previous_threshold: float | None = None
    median_drift: list[dict[str, Any]] = field(default_factory=list)   # largest shifts first
    max_drift: float = 0.0


@dataclass
class RetrainReport:
    environment: str
    version: str
    training_range: tuple[float | None, float | None]
    windows_used: int
    duration_s: float
    backend: str
    images: list[ImageReport]
    previous_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RetrainReport":
        """The report back from `to_dict` (what the retrain child prints as JSON)."""
        d = dict(d)
        d["images"] = [ImageReport(**r) for r in d.get("images", [])]
        d["training_range"] = tuple(d.get("training_range") or (None, None))
        return cls(**d)

    def to_text(self) -> str:
        lines = [f"environment {self.environment}: version {self.version} "
                 f"(previous {self.previous_version or 'none'}), {self.windows_used} windows, "
                 f"{self.duration_s:.2f}s on {self.backend}"]
        for r in self.images:
            thr = f"{r.threshold:.3f}" if r.threshold is not None else "-"
            prev = f" (was {r.previous_threshold:.3f})" if r.previous_threshold is not None else ""
            lines.append(f"  {r.image_key:40s} {r.scope:11s} windows={r.windows:<6d} threshold={thr}{prev}")
            for d in r.median_drift[:3]:
                lines.append(f"      drift {d['feature']}: median {d['old']:.3g} -> {d['new']:.3g} "
                             f"({d['shift']:+.2f} robust units)")
        return "\n".join(lines)


def median_drift(new: dict[str, Any], old: dict[str, Any], top: int = 5) -> list[dict[str, Any]]:
    """Shift of each feature median from the old manifest entry to the new one, in old robust units."""
    out = []
    scales = old.get("feature_scales", {})
    for feat, new_med in new["feature_medians"].items():
        if feat not in old.get("feature_medians", {}):
            continue
        old_med = old["feature_medians"][feat]
        scale = scales.get(feat) or 1.0
        shift = (new_med - old_med) / scale
        if shift:
            out.append({"feature": feat, "old": old_med, "new": new_med, "shift": round(shift, 3)})
    out.sort(key=lambda d: -abs(d["shift"]))
    return out[:top]


def retrain(window_store: WindowStore, model_store: ModelStore, environment: str,
            start: float | None = None, end: float | None = None, *,
            min_windows: int = DEFAULT_MIN_WINDOWS, grouping: str = "tag",
            params: dict[str, Any] | None = None, backend: str | None = None, n_jobs: int | None = None,
            window_s: float | None = None, progress: Callable[[str], None] | None = None) -> RetrainReport:
    """Train every image of `environment` from windows starting in [start, end) and save a version."""
    from model.baseline import EnvironmentBaselines

    t0 = time.perf_counter()
    windows = window_store.load(environment, start, end)
    if len(windows) < 2:
        raise ValueError(f"environment {environment!r} has {len(windows)} stored windows in that range")
    previous_version = model_store.current_version(environment)
    previous: dict[str, Any] = {}
    if previous_version:
        try:
            previous = model_store.read_manifest(environment, previous_version)["models"]
        except (UntrustedModelError, OSError, ValueError) as exc:
            log.warning("previous version %s unreadable (%s): no drift report", previous_version, exc)

    eb = EnvironmentBaselines(environment, min_windows=min_windows, grouping=grouping, params=params)
    eb.fit(windows, n_jobs=n_jobs, backend=backend, progress=progress)
    rng = (float(windows.window_start.min()), float(windows.window_end.max()))
    version = model_store.save(eb, training_range=rng, window_s=window_s,
                               extra={"backend": backend or "default"})
    manifest = model_store.read_manifest(environment, version)["models"]

    reports = []
    for key in [FALLBACK_KEY] + sorted(eb.window_counts):
        entry = manifest.get(key)
        if entry is None:          # image below min_windows: scored by the fallback
            reports.append(ImageReport(key, "fallback-only", eb.window_counts.get(key, 0), None))
            continue
        old = previous.get(key)
        drift = median_drift(entry, old) if old else []
        reports.append(ImageReport(
            image_key=key, scope=entry["scope"], windows=entry["windows"], threshold=entry["threshold"],
            previous_threshold=old["threshold"] if old else None, median_drift=drift,
            max_drift=max((abs(d["shift"]) for d in drift), default=0.0)))
    report = RetrainReport(environment=environment, version=version, training_range=(start, end),
                           windows_used=len(windows), duration_s=time.perf_counter() - t0,
                           backend=backend or "default", images=reports, previous_version=previous_version)
    log.info("retrained %s -> %s in %.2fs", environment, version, report.duration_s)
    return report


# --------------------------------------------------------------------------- in a child process

class RetrainFailed(RuntimeError):
    """The retrain child exited without saving a version (its reason is the message)."""


class ChildRetrain:
    """Runs `retrain` in a child Python process; `cancel()` (from another thread) stops it.

    Why a child: the parent (the daemon) never imports scikit-learn. The child is this
    interpreter running `python -m model.retrain` with this checkout first on PYTHONPATH."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._cancelled = False

    def run(self, windows_path: str | os.PathLike, models_dir: str | os.PathLike, environment: str,
            start: float | None = None, end: float | None = None, *,
            min_windows: int = DEFAULT_MIN_WINDOWS, window_s: float | None = None,
            timeout: float | None = None) -> RetrainReport:
        cmd = [sys.executable, "-m", "model.retrain", "--windows", os.path.abspath(windows_path),
               "--models", os.path.abspath(models_dir), "--environment", environment,
               "--min-windows", str(int(min_windows))]
        if start is not None:
            cmd += ["--start", repr(float(start))]
        if end is not None:
            cmd += ["--end", repr(float(end))]
        if window_s is not None:
            cmd += ["--window-s", repr(float(window_s))]
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with self._lock:
            if self._cancelled:
                raise RetrainFailed("cancelled")
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL, env=env)
        proc = self._proc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RetrainFailed(f"no result within {timeout:g}s") from None
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RetrainFailed(lines[-1] if lines else f"child exited with status {proc.returncode}")
        try:
            return RetrainReport.from_dict(json.loads(out.decode().strip().splitlines()[-1]))
        except (IndexError, ValueError, TypeError) as exc:
            raise RetrainFailed(f"unreadable report from the child: {exc}") from exc

    @property
    def cancelled(self) -> bool:
        """`cancel` was called: `run` starts no child any more."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop a running child (SIGTERM) and refuse to start another: shutting down."""
        with self._lock:
            self._cancelled = True
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()


def main(argv: list[str] | None = None) -> int:
    """`python -m model.retrain`: one retrain, its report as one JSON line on stdout.
    Exit 0 saved, 3 nothing to train on (or a refused store), 1 anything else."""
    p = argparse.ArgumentParser(prog="python -m model.retrain", description=main.__doc__)
    p.add_argument("--windows", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--environment", required=True)
    p.add_argument("--start", type=float)
    p.add_argument("--end", type=float)
    p.add_argument("--min-windows", type=int, default=DEFAULT_MIN_WINDOWS)
    p.add_argument("--window-s", type=float)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="retrain child: %(levelname)s %(message)s")
    try:
        with WindowStore(args.windows) as ws:
            report = retrain(ws, ModelStore(args.models), args.environment, args.start, args.end,
                             min_windows=args.min_windows, window_s=args.window_s)
    except (ValueError, UntrustedModelError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
