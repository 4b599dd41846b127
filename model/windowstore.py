"""SQLite storage of feature windows, so baselines can be retrained over any time range.

Why store windows rather than raw records: a window is ~25 numbers, a 5-minute window of a busy
container is thousands of records. The scheduler writes every window it scores; `stowaway train`
reads a time range back. Features are stored as a JSON object (name -> value), so a feature added
later reads as 0.0 from old rows instead of shifting columns.
"""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Iterable

import numpy as np

from model.baseline import normalise_image
from model.features import FEATURE_NAMES, FeatureWindows

log = logging.getLogger(__name__)

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
    PRIMARY KEY (environment, container_id, window_start)
);
CREATE INDEX IF NOT EXISTS windows_env_time ON windows (environment, window_start);
CREATE INDEX IF NOT EXISTS windows_env_image ON windows (environment, image_key);
"""


class WindowStore:
    """Feature windows per (environment, image key, container, window)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._db = sqlite3.connect(self.path)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "WindowStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, windows: FeatureWindows, environment: str | None = None) -> int:
        """Insert (or replace, same container and start) windows; returns the number written."""
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
            ))
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO windows VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        return len(rows)

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
        rows = self._db.execute(sql, args).fetchall()
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
        return [r[0] for r in self._db.execute("SELECT DISTINCT environment FROM windows ORDER BY 1")]

    def summary(self, environment: str) -> dict:
        """Windows per image key and the covered time range (for the CLI)."""
        per_image = dict(self._db.execute(
            "SELECT image_key, COUNT(*) FROM windows WHERE environment = ? GROUP BY image_key ORDER BY 1",
            (environment,)).fetchall())
        lo, hi = self._db.execute("SELECT MIN(window_start), MAX(window_end) FROM windows WHERE environment = ?",
                                  (environment,)).fetchone()
        return {"environment": environment, "windows": sum(per_image.values()), "per_image": per_image,
                "time_range": [lo, hi]}
