"""Model store (verified loading, versions, rollback), window store and retraining (joblib + Dask)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn

from model import store as store_mod
from model.baseline import EnvironmentBaselines
from model.features import FEATURE_INDEX, FEATURE_NAMES, FeatureWindows
from model.retrain import retrain
from model.store import FALLBACK_KEY, ModelStore, UntrustedModelError
from model.windowstore import WindowStore

F = len(FEATURE_NAMES)


def make_windows(n_a: int = 80, n_b: int = 60, n_c: int = 10, seed: int = 0, t0: float = 1_000_000.0,
                 shift: float = 0.0) -> FeatureWindows:
    rng = np.random.default_rng(seed)
    parts = []
    for image, n, cid in (("registry.example.com/a:1", n_a, "a"), ("registry.example.com/b:2", n_b, "b"),
                          ("registry.example.com/c:3", n_c, "c")):
        X = np.zeros((n, F))
        X[:, FEATURE_INDEX["outbound_conns"]] = rng.poisson(20 + shift, n)
        X[:, FEATURE_INDEX["dns_queries"]] = rng.poisson(6, n)
        X[:, FEATURE_INDEX["processes_started"]] = rng.poisson(30, n)
        X[:, FEATURE_INDEX["container_age_s"]] = np.arange(n) * 60.0
        starts = t0 + np.arange(n) * 60.0
        parts.append(FeatureWindows(X=X, container_id=[f"{cid}{i % 2}" for i in range(n)], image=[image] * n,
                                    host=["h1"] * n, window_start=starts, window_end=starts + 60,
                                    environment="prod", name=[f"{cid}-{i % 2}" for i in range(n)],
                                    executables=[("sh", "wget")] * n))
    return FeatureWindows.concat(parts)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "models"
    r.mkdir(mode=0o700)
    os.chmod(r, 0o700)
    return r


@pytest.fixture
def saved(root: Path):
    fw = make_windows()
    eb = EnvironmentBaselines("prod").fit(fw)
    ms = ModelStore(root, keep=3)
    version = ms.save(eb, training_range=(1.0, 2.0), window_s=60)
    return ms, eb, fw, version


class Boom:
    """Unpickling this creates a marker directory: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _model_file(ms: ModelStore, version: str, key: str) -> Path:
    m = json.loads((ms.root / "prod" / version / "manifest.json").read_text())
    return ms.root / "prod" / version / m["models"][key]["file"]


def test_roundtrip_and_manifest(saved):
    ms, eb, fw, version = saved
    loaded = ms.load("prod")
    assert [r.score for r in loaded.score(fw)] == [r.score for r in eb.score(fw)]
    m = ms.read_manifest("prod")
    assert m["format_version"] == store_mod.FORMAT_VERSION and m["version"] == version
    assert m["sklearn_version"] == sklearn.__version__
    assert m["feature_names"] == list(FEATURE_NAMES)
    assert m["training_range"] == [1.0, 2.0] and m["windows_used"] == len(fw)
    # c:3 has 10 windows (< 50): no file of its own, scored by the fallback
    assert set(m["models"]) == {FALLBACK_KEY, "registry.example.com/a:1", "registry.example.com/b:2"}
    for key, entry in m["models"].items():
        data = (ms.root / "prod" / version / entry["file"]).read_bytes()
        assert store_mod.sha256_bytes(data) == entry["sha256"]
        assert entry["threshold"] > 0 and entry["windows"] > 0
    # files and directories are private
    for p in (ms.root / "prod" / version).iterdir():
        assert p.stat().st_mode & 0o077 == 0


def test_tampered_file_refused_before_unpickling(saved, tmp_path):
    ms, _, _, version = saved
    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    joblib.dump(Boom(marker), buf)
    target = _model_file(ms, version, "registry.example.com/a:1")
    target.write_bytes(buf.getvalue())
    with pytest.raises(UntrustedModelError, match="sha256 mismatch"):
        ms.load("prod")
    assert not marker.exists()
    # sanity: the payload does run code when loaded blindly (so the refusal above mattered)
    joblib.load(io.BytesIO(buf.getvalue()))
    assert marker.exists()


def test_flipped_byte_refused(saved):
    ms, _, _, version = saved
    target = _model_file(ms, version, FALLBACK_KEY)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(UntrustedModelError):
        ms.load("prod")
    with pytest.raises(UntrustedModelError):
        ms.verify("prod")


def test_foreign_owner_refused(saved, monkeypatch, tmp_path):
    ms, _, _, version = saved
    target = _model_file(ms, version, "registry.example.com/b:2")
    loads = []
    monkeypatch.setattr(joblib, "load", lambda *a, **k: loads.append(a))
    if os.geteuid() == 0:
        os.chown(target, 65534, 65534)             # owned by nobody
    else:                                          # cannot chown: pretend we are someone else
        monkeypatch.setattr(store_mod, "_trusted_uids", lambda: {os.geteuid() + 1})
    with pytest.raises(UntrustedModelError, match="owned by uid"):
        ms.load("prod")
    assert loads == []


@pytest.mark.parametrize("what", ["version_dir", "env_dir", "root", "file"])
def test_group_or_world_writable_refused(saved, monkeypatch, what):
    ms, _, _, version = saved
    loads = []
    monkeypatch.setattr(joblib, "load", lambda *a, **k: loads.append(a))
    path = {"version_dir": ms.root / "prod" / version, "env_dir": ms.root / "prod", "root": ms.root,
            "file": _model_file(ms, version, "registry.example.com/a:1")}[what]
    os.chmod(path, 0o777 if path.is_dir() else 0o662)
    with pytest.raises(UntrustedModelError, match="writable by group or others"):
        ms.load("prod")
    assert loads == []


def test_symlinked_model_refused(saved, tmp_path):
    ms, _, _, version = saved
    target = _model_file(ms, version, "registry.example.com/a:1")
    elsewhere = tmp_path / "elsewhere.joblib"
    elsewhere.write_bytes(target.read_bytes())
    os.chmod(elsewhere, 0o600)
    target.unlink()
    target.symlink_to(elsewhere)
    with pytest.raises(UntrustedModelError):
        ms.load("prod")


def test_manifest_must_be_trusted_too(saved):
    ms, _, _, version = saved
    os.chmod(ms.root / "prod" / version / "manifest.json", 0o666)
    with pytest.raises(UntrustedModelError):
        ms.read_manifest("prod")


def test_versions_keep_and_rollback(root):
    ms = ModelStore(root, keep=2)
    fw = make_windows()
    versions = [ms.save(EnvironmentBaselines("prod", params={"random_state": s}).fit(fw)) for s in range(4)]
    assert ms.versions("prod") == versions[-2:]           # the last K kept
    assert ms.current_version("prod") == versions[-1]
    assert ms.rollback("prod") == versions[-2]
    assert ms.current_version("prod") == versions[-2]
    assert ms.load("prod").fallback.random_state == 2
    with pytest.raises(ValueError):
        ms.rollback("prod")                                # nothing older left
    assert ms.rollback("prod", to=versions[-1]) == versions[-1]
    with pytest.raises(ValueError):
        ms.rollback("prod", to="v999999-20260101T000000Z")
    # pruning never deletes the current version
    ms.rollback("prod", to=versions[-2])
    assert ms.prune("prod", keep=1) == []
    assert ms.versions("prod") == versions[-2:]


def test_rollback_refuses_a_tampered_version(root):
    ms = ModelStore(root, keep=5)
    fw = make_windows()
    v1 = ms.save(EnvironmentBaselines("prod").fit(fw))
    ms.save(EnvironmentBaselines("prod").fit(fw))
    f = _model_file(ms, v1, FALLBACK_KEY)
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(UntrustedModelError):
        ms.rollback("prod")
    assert ms.current_version("prod") != v1


def test_bad_environment_name(root):
    with pytest.raises(ValueError):
        ModelStore(root).versions("../etc")


def test_window_store_roundtrip_and_range(tmp_path):
    fw = make_windows()
    with WindowStore(tmp_path / "w.sqlite") as ws:
        assert ws.add(fw) == len(fw)
        assert ws.add(fw) == len(fw)                       # same rows replaced, not duplicated
        back = ws.load("prod")
        assert len(back) == len(fw)
        order = np.lexsort((np.array(fw.container_id), fw.window_start))
        assert np.array_equal(back.X, fw.X[order])
        assert back.executables[0] == ("sh", "wget")
        part = ws.load("prod", start=1_000_000.0 + 600, end=1_000_000.0 + 1200)
        assert len(part) == 10 * 2 and part.window_start.min() >= 1_000_600   # c:3 ended before
        s = ws.summary("prod")
        assert s["per_image"] == {"registry.example.com/a:1": 80, "registry.example.com/b:2": 60,
                                  "registry.example.com/c:3": 10}
        assert ws.environments() == ["prod"]
        assert len(ws.load("staging")) == 0


def test_retrain_report_with_drift(tmp_path, root):
    ws = WindowStore(tmp_path / "w.sqlite")
    ws.add(make_windows(t0=1_000_000.0))
    ms = ModelStore(root)
    first = retrain(ws, ms, "prod", backend="threading", n_jobs=2)
    assert first.previous_version is None and first.windows_used == 150
    by_key = {r.image_key: r for r in first.images}
    assert by_key["registry.example.com/a:1"].scope == "image" and by_key["registry.example.com/a:1"].windows == 80
    assert by_key["registry.example.com/c:3"].scope == "fallback-only"
    # a week later the service makes 10 more connections per window
    ws.add(make_windows(t0=2_000_000.0, seed=1, shift=10))
    second = retrain(ws, ms, "prod", start=2_000_000.0)
    assert second.previous_version == first.version and second.windows_used == 150
    a = {r.image_key: r for r in second.images}["registry.example.com/a:1"]
    assert a.previous_threshold is not None
    assert a.median_drift[0]["feature"] == "outbound_conns" and a.median_drift[0]["shift"] > 1
    assert "outbound_conns" in second.to_text()
    with pytest.raises(ValueError):
        retrain(ws, ms, "prod", start=9_000_000.0)
    ws.close()


def test_retrain_on_dask_local_cluster(tmp_path, root):
    distributed = pytest.importorskip("dask.distributed")
    ws = WindowStore(tmp_path / "w.sqlite")
    fw = make_windows()
    ws.add(fw)
    ms = ModelStore(root)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        rep = retrain(ws, ms, "prod", backend="dask", n_jobs=-1)
    assert rep.backend == "dask"
    assert ms.read_manifest("prod")["backend"] == "dask"
    # same models as a local fit: the backend does not change the result
    local = EnvironmentBaselines("prod").fit(ws.load("prod"))
    assert [r.score for r in ms.load("prod").score(fw)] == [r.score for r in local.score(fw)]
    ws.close()


def test_directory_owned_by_another_user_refused(saved, monkeypatch):
    ms, _, _, version = saved
    loads = []
    monkeypatch.setattr(joblib, "load", lambda *a, **k: loads.append(a))
    vdir = ms.root / "prod" / version
    if os.geteuid() == 0:
        os.chown(vdir, 65534, 65534)
    else:
        real = store_mod.check_mode

        def as_if_foreign(st, what, trusted_uids=None):
            if what == f"directory {vdir}":
                st = os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, os.geteuid() + 1,
                                     st.st_gid, st.st_size, st.st_atime, st.st_mtime, st.st_ctime))
            return real(st, what, trusted_uids)

        monkeypatch.setattr(store_mod, "check_mode", as_if_foreign)
    with pytest.raises(UntrustedModelError, match=f"directory {vdir} is owned by uid"):
        ms.load("prod")
    assert loads == []


def test_same_data_gives_byte_identical_model_files(tmp_path):
    hashes = []
    for i in range(2):
        r = tmp_path / f"m{i}"
        r.mkdir(mode=0o700)
        ms = ModelStore(r)
        ms.save(EnvironmentBaselines("prod").fit(make_windows()))
        hashes.append({k: (e["sha256"], e["compiled"]["sha256"])
                       for k, e in ms.read_manifest("prod")["models"].items()})
    assert hashes[0] == hashes[1]
