"""`stowaway train / models / rollback / compile` end to end on a small window store."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from model.features import FEATURE_INDEX, FEATURE_NAMES, FeatureWindows
from model.windowstore import WindowStore
from scheduler import cli


def _windows(n: int, image: str, cid: str, t0: float = 1_795_000_000.0) -> FeatureWindows:
    rng = np.random.default_rng(len(image))
    X = np.zeros((n, len(FEATURE_NAMES)))
    X[:, FEATURE_INDEX["outbound_conns"]] = rng.poisson(20, n)
    X[:, FEATURE_INDEX["dns_queries"]] = rng.poisson(5, n)
    starts = t0 + np.arange(n) * 300.0
    return FeatureWindows(X=X, container_id=[cid] * n, image=[image] * n, host=["h"] * n,
                          window_start=starts, window_end=starts + 300, environment="staging")


@pytest.fixture
def stores(tmp_path):
    db = tmp_path / "w.sqlite"
    with WindowStore(db) as ws:
        ws.add(_windows(120, "shop/web:2", "w1"))
        ws.add(_windows(30, "shop/cron:1", "c1"))
    models = tmp_path / "models"
    return str(db), str(models)


def test_help_texts(capsys):
    for cmd in ("train", "models", "rollback", "compile"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--backend" in out and "--dask-scheduler" in out and "--since" in out and "--to VERSION" in out


def test_train_models_rollback(stores, capsys):
    db, models = stores
    assert cli.main(["train", "--windows", db, "--models", models, "--backend", "sequential",
                     "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)[0]
    assert report["environment"] == "staging" and report["windows_used"] == 150
    scopes = {r["image_key"]: r["scope"] for r in report["images"]}
    assert scopes == {"__environment__": "environment", "docker.io/shop/web:2": "image",
                      "docker.io/shop/cron:1": "fallback-only"}
    assert os.stat(models).st_mode & 0o077 == 0

    assert cli.main(["train", "--windows", db, "--models", models, "-e", "staging", "--backend", "threading",
                     "--n-jobs", "2", "--since", "2026-11-18T00:00:00Z", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "previous v000001" in text

    assert cli.main(["models", "--models", models, "--verify", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)["staging"]
    assert [r["current"] for r in listing] == [False, True] and all(r["verified"] for r in listing)

    assert cli.main(["rollback", "--models", models, "-e", "staging"]) == 0
    assert "-> v000001" in capsys.readouterr().out
    assert cli.main(["rollback", "--models", models, "-e", "staging"]) == 1      # nothing older
    assert "no version older" in capsys.readouterr().err


def test_models_verify_reports_tampering(stores, capsys):
    db, models = stores
    assert cli.main(["train", "--windows", db, "--models", models, "--backend", "sequential", "--no-progress"]) == 0
    capsys.readouterr()
    env_dir = os.path.join(models, "staging")
    version = sorted(d for d in os.listdir(env_dir) if d.startswith("v"))[0]
    victim = next(f for f in os.listdir(os.path.join(env_dir, version)) if f.endswith(".joblib"))
    with open(os.path.join(env_dir, version, victim), "ab") as fh:
        fh.write(b"\0")
    assert cli.main(["models", "--models", models, "--verify"]) == 1
    assert "REFUSED: sha256 mismatch" in capsys.readouterr().out


def test_train_without_store_fails_cleanly(tmp_path, capsys):
    assert cli.main(["train", "--windows", str(tmp_path / "none.sqlite"), "--models", str(tmp_path / "m")]) == 2
    assert "no window store" in capsys.readouterr().err


def test_windows_default_to_the_daemons_location(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STOWAWAY_WINDOWS", raising=False)
    models = tmp_path / "models"
    models.mkdir(mode=0o700)
    with WindowStore(models / "windows.db") as ws:
        ws.add(_windows(60, "shop/web:2", "w1"))
    assert cli.main(["train", "--models", str(models), "--backend", "sequential", "--no-progress"]) == 0
    assert "docker.io/shop/web:2" in capsys.readouterr().out


def test_min_windows_default_is_50_everywhere(tmp_path):
    """An image needs 50 windows (configurable) before it gets its own baseline: the model, the
    config file default and `stowaway train` agree; only the demo lowers it, explicitly, because
    its 30-minute training recording holds 31 windows of cron:1.0."""
    from model.baseline import DEFAULT_MIN_WINDOWS, EnvironmentBaselines
    from scheduler.cli.cmd_pipeline import demo_config
    from scheduler.config import Config

    train = cli.build_parser().parse_args(["train"])
    assert DEFAULT_MIN_WINDOWS == 50
    assert Config().model.min_windows == train.min_windows == EnvironmentBaselines().min_windows == 50
    assert 0 < demo_config(tmp_path).model.min_windows <= 31
