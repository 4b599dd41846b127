"""SQLite storage of feature windows, so baselines can be retrained over any time range.

Why store windows rather than raw records: a window is ~25 numbers, a 5-minute window of a busy
container is thousands of records. The scheduler writes every window it scores; `stowaway train`
reads a time range back. Features are stored as a JSON object (name -> value), so a feature added
later reads as 0.0 from old rows instead of shifting columns.

Threads: a sqlite3 connection may only be used by the thread that created it, and the daemon
writes windows from its APScheduler worker threads while the retrain and prune jobs read and delete
from others. So the store owns one worker thread that opens the connection and runs every
statement; `add`, `load`, `prune`... hand their work to it and wait for the answer. Callers on any
thread see one serial writer, and no statement ever runs on a connection from a foreign thread.
"""
from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np

from model.images import normalise_image
from model.features import FEATURE_NAMES, FeatureWindows

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    environment   TEXT NOT NULL,
    image         TEXT NOT NULL,
    image_key     TEXT NOT NULL,
    container_id  TEXT NOT NULL,
    container_name TEXT NOT NULL DEFAULT '',
    host          TEXT NOT NULL DEFAULT '',
    window_start  REAL NOT NULL,
    window_end    REAL NOT NULL,
    features      TEXT NOT NULL,
    executables   TEXT NOT NULL DEFAULT '[]',
    scored_by     TEXT NOT NULL DEFAULT '',   -- model version that scored it ('' = none)
    PRIMARY KEY (environment, container_id, window_start)
);
CREATE INDEX IF NOT EXISTS windows_env_time ON windows (environment, window_start);
CREATE INDEX IF NOT EXISTS windows_env_image ON windows (environment, image_key);
"""


class WindowStore:
    """Feature windows per (environment, image key, container, window)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._jobs: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], Future] | None] = \
            queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"windowstore:{Path(path).name}",
                                        daemon=True)
        ready: Future = Future()
        self._thread.start()
        self._jobs.put((lambda db: None, ready))
        ready.result()          # the schema exists (or the open error is raised here)

    # -- the owning thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        """Open the connection here and run every job on it until `close`."""
        try:
            db = sqlite3.connect(self.path)
            db.executescript(_SCHEMA)
            cols = {r[1] for r in db.execute("PRAGMA table_info(windows)")}
            if "scored_by" not in cols:       # a store written before the column existed
                db.execute("ALTER TABLE windows ADD COLUMN scored_by TEXT NOT NULL DEFAULT ''")
                db.commit()
        except BaseException as exc:
            job = self._jobs.get()
            if job is not None:
                job[1].set_exception(exc)
            return
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(db))
                except BaseException as exc:   # handed to the caller's thread
                    fut.set_exception(exc)
        finally:
            db.close()

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the owning thread and return its result (or raise its error)."""
        if self._closed:
            raise RuntimeError(f"window store {self.path} is closed")
        fut: Future = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def __enter__(self) -> "WindowStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def add(self, windows: FeatureWindows, environment: str | None = None,
            scored_by: str = "") -> int:
        """Insert (or replace, same container and start) windows; returns the number written.
        `scored_by`: the model version the caller scored them with ("" = not scored)."""
        env = environment or windows.environment
        names = list(windows.feature_names)
        rows = []
        for i in range(len(windows)):
            rows.append((
                env, windows.image[i], normalise_image(windows.image[i]), windows.container_id[i],
                windows.name[i] if windows.name else "", windows.host[i],
                float(windows.window_start[i]), float(windows.window_end[i]),
                json.dumps(dict(zip(names, map(float, windows.X[i]))), separators=(",", ":")),
                json.dumps(list(windows.executables[i]) if windows.executables else []),
                scored_by,
            ))

        def write(db: sqlite3.Connection) -> int:
            with db:
                db.executemany("INSERT OR REPLACE INTO windows VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                               rows)
            return len(rows)
        return self._run(write)

    def prune(self, before: float) -> int:
        """Delete windows that ended before `before` (retention); returns how many."""
        def delete(db: sqlite3.Connection) -> int:
            with db:
                return db.execute("DELETE FROM windows WHERE window_end < ?",
                                  (float(before),)).rowcount
        return self._run(delete)

    def count(self, environment: str | None = None) -> int:
        if environment is None:
            return self._run(lambda db: db.execute("SELECT COUNT(*) FROM windows").fetchone()[0])
        return self._run(lambda db: db.execute("SELECT COUNT(*) FROM windows WHERE environment=?",
                                               (environment,)).fetchone()[0])

    def scored_by(self, environment: str) -> list[tuple[float, str, str]]:
        """(window_start, container_id, model version) of every window, in time order."""
        return self._run(lambda db: [tuple(r) for r in db.execute(
            "SELECT window_start, container_id, scored_by FROM windows WHERE environment=? "
            "ORDER BY window_start, container_id", (environment,))])

    def load(self, environment: str, start: float | None = None, end: float | None = None,
             images: Iterable[str] | None = None) -> FeatureWindows:
        """Windows of one environment starting in [start, end), optionally only some image keys."""
        sql = ("SELECT image, container_id, container_name, host, window_start, window_end, features, executables "
               "FROM windows WHERE environment = ?")
        args: list = [environment]
        if start is not None:
            sql += " AND window_start >= ?"
            args.append(float(start))
        if end is not None:
            sql += " AND window_start < ?"
            args.append(float(end))
        wanted = set(images) if images is not None else None
        sql += " ORDER BY window_start, container_id"
        rows = self._run(lambda db: db.execute(sql, args).fetchall())
        if wanted is not None:
            rows = [r for r in rows if normalise_image(r[0]) in wanted or r[0] in wanted]
        if not rows:
            return FeatureWindows.empty(environment)
        X = np.zeros((len(rows), len(FEATURE_NAMES)))
        missing: set[str] = set()
        for i, r in enumerate(rows):
            feats = json.loads(r[6])
            for j, name in enumerate(FEATURE_NAMES):
                v = feats.get(name)
                if v is None:
                    missing.add(name)
                else:
                    X[i, j] = v
        if missing:
            log.warning("stored windows lack %s; read as 0.0", ", ".join(sorted(missing)))
        return FeatureWindows(
            X=X, container_id=[r[1] for r in rows], image=[r[0] for r in rows], host=[r[3] for r in rows],
            window_start=np.array([r[4] for r in rows]), window_end=np.array([r[5] for r in rows]),
            environment=environment, name=[r[2] for r in rows],
            executables=[tuple(json.loads(r[7])) for r in rows])

    def environments(self) -> list[str]:
        return self._run(lambda db: [r[0] for r in db.execute(
            "SELECT DISTINCT environment FROM windows ORDER BY 1")])

    def summary(self, environment: str) -> dict:
        """Windows per image key and the covered time range (for the CLI)."""
        per_image = dict(self._run(lambda db: db.execute(
            "SELECT image_key, COUNT(*) FROM windows WHERE environment = ? GROUP BY image_key ORDER BY 1",
            (environment,)).fetchall()))
        lo, hi = self._run(lambda db: db.execute(
            "SELECT MIN(window_start), MAX(window_end) FROM windows WHERE environment = ?",
            (environment,)).fetchone())
        return {"environment": environment, "windows": sum(per_image.values()), "per_image": per_image,
                "time_range": [lo, hi]}
