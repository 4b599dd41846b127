"""Model persistence: joblib files, one per (environment, image), their compiled arrays (.npz)
beside them, plus a manifest per version.

Why this much care: loading a joblib file unpickles it, and unpickling runs code. So before a single
byte is unpickled the loader checks, on the already-opened file descriptor, that
* the file is a regular file (opened with O_NOFOLLOW, so a symlink is refused),
* it is owned by the current user (or root) and not writable by group or others,
* every directory from the store root down to it is owned by the current user (or root), is not a
  symlink and is not writable by group or others,
* its sha256 equals the one in the version's manifest (which passes the same ownership checks).
The bytes that were hashed are the bytes that are unpickled (read once into memory), so the file
cannot be swapped between the check and the load.

Layout (directories 0700, files 0600):

    <root>/<environment>/CURRENT                     the active version id
    <root>/<environment>/<version>/manifest.json     format version, library versions, features,
                                                     training range, windows, thresholds, sha256s
    <root>/<environment>/<version>/<image>.joblib    one ImageBaseline per image key
    <root>/<environment>/<version>/__environment__.joblib   the environment-wide fallback

    <root>/<environment>/<version>/<image>.npz       its compiled arrays (model/compiled.py)

The .npz files are what the daemon loads (`load_compiled`): numpy arrays read with
allow_pickle=False, so loading runs no code and needs neither scikit-learn nor joblib, which is
why those two are imported only inside the functions that train, pickle or unpickle. They pass the
same checks as the joblib files (ownership, modes, sha256 in the manifest). A version saved before
the compiled files existed has none: `load_compiled` then unpickles and compiles in memory (with
scikit-learn in the process) and says so; `stowaway compile` writes them.

The last `keep` versions are kept; `rollback` points CURRENT at an older one.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.compiled import COMPILED_FORMAT, CompiledBaselines, CompiledModel, CompileError
from model.features import FEATURE_NAMES

if TYPE_CHECKING:   # scikit-learn and joblib: only where a model is trained, pickled or unpickled
    from model.baseline import EnvironmentBaselines

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
FALLBACK_KEY = "__environment__"
DEFAULT_KEEP = 5
_VERSION_RE = re.compile(r"^v\d{6}-\d{8}T\d{6}Z$")
_ENV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UntrustedModelError(Exception):
    """A model or manifest failed an integrity or ownership check; nothing was unpickled."""


# --------------------------------------------------------------------------- trust checks (pure-ish)

def _trusted_uids() -> set[int]:
    return {os.geteuid(), 0}


def check_mode(st: os.stat_result, what: str, trusted_uids: set[int] | None = None) -> None:
    """Refuse a file or directory owned by another user or writable by group/others."""
    uids = trusted_uids if trusted_uids is not None else _trusted_uids()
    if st.st_uid not in uids:
        raise UntrustedModelError(f"{what} is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedModelError(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def check_directories(path: Path, root: Path, trusted_uids: set[int] | None = None) -> None:
    """Every directory from `root` down to `path`'s parent must be trusted and not a symlink."""
    root = Path(os.path.abspath(root))
    parent = Path(os.path.abspath(path)).parent
    try:
        rel = parent.relative_to(root)
    except ValueError as exc:
        raise UntrustedModelError(f"{path} is outside the model store {root}") from exc
    d = root
    for part in ("",) + rel.parts:
        d = d / part if part else d
        st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UntrustedModelError(f"{d} is not a plain directory")
        check_mode(st, f"directory {d}", trusted_uids)


def read_trusted(path: Path, root: Path, trusted_uids: set[int] | None = None) -> bytes:
    """Read a file after the ownership/permission checks, on the opened descriptor."""
    check_directories(path, root, trusted_uids)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise UntrustedModelError(f"cannot open {path} safely: {exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedModelError(f"{path} is not a regular file")
        check_mode(st, f"file {path}", trusted_uids)
        return fh.read()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_slug(image_key: str) -> str:
    """A file name for an image key: readable part + short hash (keys may contain / : @)."""
    if image_key == FALLBACK_KEY:
        return FALLBACK_KEY
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image_key).strip("._")[:80] or "image"
    return f"{safe}-{hashlib.sha1(image_key.encode()).hexdigest()[:10]}"


# --------------------------------------------------------------------------- the store

class ModelStore:
    """Versioned, verified storage of EnvironmentBaselines under one root directory."""

    def __init__(self, root: str | os.PathLike, keep: int = DEFAULT_KEEP):
        self.root = Path(os.path.abspath(root))
        self.keep = max(1, int(keep))

    # paths ---------------------------------------------------------------------------------
    def _env_dir(self, environment: str) -> Path:
        if not _ENV_RE.match(environment):
            raise ValueError(f"bad environment name {environment!r}")
        return self.root / environment

    def _mkdir(self, d: Path) -> None:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    # versions ------------------------------------------------------------------------------
    def versions(self, environment: str) -> list[str]:
        d = self._env_dir(environment)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and _VERSION_RE.match(p.name))

    def environments(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _ENV_RE.match(p.name))

    def current_version(self, environment: str) -> str | None:
        p = self._env_dir(environment) / CURRENT
        if not p.exists():
            return None
        v = read_trusted(p, self.root).decode().strip()
        return v if _VERSION_RE.match(v) else None

    def _set_current(self, environment: str, version: str) -> None:
        self._write(self._env_dir(environment) / CURRENT, (version + "\n").encode())

    def read_manifest(self, environment: str, version: str | None = None) -> dict[str, Any]:
        version = version or self.current_version(environment)
        if not version or not _VERSION_RE.match(version):
            raise FileNotFoundError(f"no model version for environment {environment!r}")
        data = read_trusted(self._env_dir(environment) / version / MANIFEST, self.root)
        manifest = json.loads(data)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UntrustedModelError(f"manifest format {manifest.get('format_version')} != {FORMAT_VERSION}")
        return manifest

    # save ----------------------------------------------------------------------------------
    def save(self, baselines: "EnvironmentBaselines", *, training_range: tuple[float, float] | None = None,
             window_s: float | None = None, extra: dict[str, Any] | None = None) -> str:
        """Write a new version (per image a joblib file and its compiled .npz, + manifest), make it
        current, prune."""
        import joblib
        import sklearn

        if baselines.fallback is None:
            raise ValueError("baselines are not fitted")
        env_dir = self._env_dir(baselines.environment)
        self._mkdir(self.root)
        self._mkdir(env_dir)
        existing = self.versions(baselines.environment)
        seq = int(existing[-1][1:7]) + 1 if existing else 1
        version = f"v{seq:06d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        vdir = env_dir / version
        vdir.mkdir(mode=0o700)
        os.chmod(vdir, 0o700)

        entries: dict[str, Any] = {}
        items = [(FALLBACK_KEY, baselines.fallback)] + list(baselines.models.items())
        for key, model in items:
            buf = io.BytesIO()
            joblib.dump(model, buf, compress=3)
            data = buf.getvalue()
            name = file_slug(key) + ".joblib"
            self._write(vdir / name, data)
            entries[key] = {
                "file": name, "sha256": sha256_bytes(data),
                "scope": "environment" if key == FALLBACK_KEY else "image",
                "windows": int(model.n_windows_), "threshold": float(model.threshold_),
                "feature_medians": dict(zip(model.feature_names, map(float, model.median_))),
                "feature_scales": dict(zip(model.feature_names, map(float, model.scale_))),
            }
            compiled = self._write_compiled(vdir, key, model)
            if compiled is not None:
                entries[key]["compiled"] = compiled
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "environment": baselines.environment,
            "created": time.time(),
            "sklearn_version": sklearn.__version__,
            "numpy_version": np.__version__,
            "joblib_version": joblib.__version__,
            "compiled_format": COMPILED_FORMAT,
            "python_version": platform.python_version(),
            "feature_names": list(FEATURE_NAMES),
            "window_s": window_s,
            "training_range": list(training_range) if training_range else None,
            "windows_used": int(sum(baselines.window_counts.values())),
            "window_counts": baselines.window_counts,
            "min_windows": baselines.min_windows,
            "grouping": baselines.grouping,
            "params": baselines.params,
            "models": entries,
            **(extra or {}),
        }
        self._write(vdir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        self._set_current(baselines.environment, version)
        self.prune(baselines.environment)
        log.info("saved %s/%s: %d image models + fallback", baselines.environment, version, len(baselines.models))
        return version

    def _write_compiled(self, vdir: Path, key: str, model: Any) -> dict[str, Any] | None:
        """Compile one ImageBaseline and write its .npz; the manifest entry's `compiled` part, or
        None (logged) when this model cannot be compiled exactly."""
        from model.compiled import compile_model

        try:
            data = compile_model(model).to_npz_bytes()
        except CompileError as exc:
            log.warning("%s: not compiled (%s): the daemon will load it with scikit-learn", key, exc)
            return None
        name = file_slug(key) + ".npz"
        self._write(vdir / name, data)
        return {"file": name, "sha256": sha256_bytes(data)}

    def compile(self, environment: str, version: str | None = None) -> str:
        """Write the compiled .npz files of a version saved without them (before they existed)
        and add them to its manifest; returns the version. The joblib files are verified and
        unpickled for this, so scikit-learn is imported."""
        manifest = self.read_manifest(environment, version)
        eb = self.load(environment, manifest["version"])
        vdir = self._env_dir(environment) / manifest["version"]
        items = [(FALLBACK_KEY, eb.fallback)] + list(eb.models.items())
        for key, model in items:
            compiled = self._write_compiled(vdir, key, model)
            if compiled is None:
                raise CompileError(f"{environment}/{manifest['version']}: {key} cannot be compiled")
            manifest["models"][key]["compiled"] = compiled
        manifest["compiled_format"] = COMPILED_FORMAT
        self._write(vdir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        log.info("compiled %s/%s: %d models", environment, manifest["version"], len(items))
        return manifest["version"]

    def prune(self, environment: str, keep: int | None = None) -> list[str]:
        """Delete the oldest versions beyond `keep`; never the current one."""
        keep = self.keep if keep is None else max(1, keep)
        current = self.current_version(environment)
        versions = self.versions(environment)
        removed = []
        for v in versions[:-keep] if len(versions) > keep else []:
            if v == current:
                continue
            vdir = self._env_dir(environment) / v
            for f in vdir.iterdir():
                f.unlink()
            vdir.rmdir()
            removed.append(v)
        return removed

    # load ----------------------------------------------------------------------------------
    def verify(self, environment: str, version: str | None = None) -> dict[str, Any]:
        """Check ownership, modes and hashes of a version's files without unpickling anything."""
        manifest = self.read_manifest(environment, version)
        vdir = self._env_dir(environment) / manifest["version"]
        for key, entry in manifest["models"].items():
            self._verified_bytes(vdir, key, entry)
            if entry.get("compiled"):
                self._verified_bytes(vdir, key, entry["compiled"], ".npz")
        return manifest

    def _verified_bytes(self, vdir: Path, key: str, entry: dict[str, Any], suffix: str = ".joblib") -> bytes:
        name = entry["file"]
        if "/" in name or name.startswith(".") or not name.endswith(suffix):
            raise UntrustedModelError(f"manifest names a bad file for {key}: {name!r}")
        data = read_trusted(vdir / name, self.root)
        digest = sha256_bytes(data)
        if digest != entry["sha256"]:
            raise UntrustedModelError(f"sha256 mismatch for {vdir / name}: {digest} != manifest {entry['sha256']}")
        return data

    def load(self, environment: str, version: str | None = None) -> "EnvironmentBaselines":
        """Load a version (default: current); every file is verified before it is unpickled."""
        import joblib
        import sklearn

        from model.baseline import EnvironmentBaselines, ImageBaseline

        manifest = self.read_manifest(environment, version)
        if manifest["feature_names"] != list(FEATURE_NAMES):
            raise UntrustedModelError("model was trained with a different feature list; retrain it")
        if manifest.get("sklearn_version") != sklearn.__version__:
            log.warning("model %s/%s was saved with scikit-learn %s, running %s", environment,
                        manifest["version"], manifest.get("sklearn_version"), sklearn.__version__)
        vdir = self._env_dir(environment) / manifest["version"]
        # verify everything first, then unpickle: one bad file refuses the whole version
        blobs = {key: self._verified_bytes(vdir, key, entry) for key, entry in manifest["models"].items()}
        eb = EnvironmentBaselines(environment=environment, min_windows=manifest["min_windows"],
                                  grouping=manifest["grouping"], params=manifest.get("params") or {})
        eb.window_counts = {k: int(v) for k, v in manifest.get("window_counts", {}).items()}
        for key, data in blobs.items():
            model = joblib.load(io.BytesIO(data))
            if not isinstance(model, ImageBaseline):
                raise UntrustedModelError(f"{key}: unexpected object {type(model).__name__}")
            if key == FALLBACK_KEY:
                eb.fallback = model
            else:
                eb.models[key] = model
        eb.models = dict(sorted(eb.models.items()))
        eb.version = manifest["version"]  # type: ignore[attr-defined]
        return eb

    def load_compiled(self, environment: str, version: str | None = None) -> CompiledBaselines:
        """Load a version's compiled baselines (default: current) for scoring, with neither
        scikit-learn nor joblib: every .npz is verified like the joblib files, then read with
        allow_pickle=False. A version without compiled files (saved before they existed) is
        unpickled and compiled in memory instead, which imports scikit-learn: logged, with the
        command that writes them."""
        manifest = self.read_manifest(environment, version)
        if manifest["feature_names"] != list(FEATURE_NAMES):
            raise UntrustedModelError("model was trained with a different feature list; retrain it")
        v = manifest["version"]
        entries = manifest["models"]
        if not all(e.get("compiled") for e in entries.values()):
            from model.compiled import compile_baselines

            log.warning("model %s/%s has no compiled files: loading it with scikit-learn (about "
                        "200 MiB more memory); run `stowaway compile --models %s -e %s` or "
                        "retrain to write them", environment, v, self.root, environment)
            cb = compile_baselines(self.load(environment, v))
            cb.version = v
            return cb
        vdir = self._env_dir(environment) / v
        blobs = {key: self._verified_bytes(vdir, key, e["compiled"], ".npz") for key, e in entries.items()}
        cb = CompiledBaselines(environment=environment, min_windows=manifest["min_windows"],
                               grouping=manifest["grouping"], params=manifest.get("params") or {})
        cb.window_counts = {k: int(n) for k, n in manifest.get("window_counts", {}).items()}
        for key, data in blobs.items():
            try:
                model = CompiledModel.from_npz_bytes(data)
            except CompileError as exc:
                raise UntrustedModelError(f"{key}: {exc}") from exc
            if key == FALLBACK_KEY:
                cb.fallback = model
            else:
                cb.models[key] = model
        if cb.fallback is None:
            raise UntrustedModelError(f"{environment}/{v} has no environment-wide model")
        cb.models = dict(sorted(cb.models.items()))
        cb.version = v
        return cb

    def rollback(self, environment: str, to: str | None = None) -> str:
        """Point CURRENT at `to` (default: the version before the current one), after verifying it."""
        versions = self.versions(environment)
        current = self.current_version(environment)
        if to is None:
            older = [v for v in versions if current is None or v < current]
            if not older:
                raise ValueError(f"no version older than {current} to roll back to")
            to = older[-1]
        if to not in versions:
            raise ValueError(f"unknown version {to!r}; have {', '.join(versions) or 'none'}")
        self.verify(environment, to)
        self._set_current(environment, to)
        log.info("%s: rolled back from %s to %s", environment, current, to)
        return to

    def describe(self, environment: str) -> list[dict[str, Any]]:
        """One summary per version (for `stowaway models`); manifests only, nothing unpickled."""
        current = self.current_version(environment)
        out = []
        for v in self.versions(environment):
            try:
                m = self.read_manifest(environment, v)
            except (UntrustedModelError, OSError, ValueError) as exc:
                out.append({"version": v, "current": v == current, "error": str(exc)})
                continue
            out.append({
                "version": v, "current": v == current, "created": m["created"],
                "training_range": m.get("training_range"), "windows_used": m.get("windows_used"),
                "images": sorted(k for k in m["models"] if k != FALLBACK_KEY),
                "thresholds": {k: round(e["threshold"], 4) for k, e in m["models"].items()},
                "sklearn_version": m.get("sklearn_version"),
            })
        return out
