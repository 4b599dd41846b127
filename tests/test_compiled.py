"""The compiled scorer (model/compiled.py) gives EnvironmentBaselines' results bit for bit, is
stored and verified like the joblib files, and keeps scikit-learn out of the daemon's process.

Real data: baselines trained on the benign_long recording score benign_long, drift and
geo_lookup (the image-scoped models, the environment-wide fallback for the --rm one-shot,
`openssl` as an unseen executable, novelty beyond the training range); synthetic windows cover
the robust scaler, NaN and a large batch. Scores are compared with `==`, never a tolerance,
except against scikit-learn's own score_samples (1e-9, the bound the estimator's fast path is
held to).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from model.baseline import EnvironmentBaselines
from model.compiled import CompiledBaselines, CompiledModel, compile_baselines, compile_model
from model.features import FEATURE_INDEX, build_windows
from model.store import FALLBACK_KEY, ModelStore, UntrustedModelError
from scenario_records import load_scenario
from test_model_store import make_windows

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 30.0


@pytest.fixture(scope="module")
def scenario():
    """benign_long, drift and geo_lookup as 30 s windows; baselines fitted on benign_long."""
    fw = {}
    for name in ("benign_long", "drift", "geo_lookup"):
        r = load_scenario(name)
        fw[name] = build_windows(r.processes, r.nets, r.lifecycle, r.containers, window_s=WINDOW_S,
                                 environment="fixtures")
    eb = EnvironmentBaselines("fixtures").fit(fw["benign_long"])
    return fw, eb, compile_baselines(eb)


def _forest_matches_sklearn(eb: EnvironmentBaselines, cb: CompiledBaselines, X: np.ndarray) -> None:
    for key, model in [(FALLBACK_KEY, eb.fallback)] + list(eb.models.items()):
        cm = cb.fallback if key == FALLBACK_KEY else cb.models[key]
        ours = cm._forest_scores(X)
        assert np.array_equal(ours, model._forest_scores(X)), key
        np.testing.assert_allclose(ours, model.pipeline_.score_samples(X), rtol=0, atol=1e-9)


def test_scenarios_score_identically(scenario):
    fw, eb, cb = scenario
    seen = {"image": 0, "fallback": 0, "anomaly": 0, "unseen": 0, "novelty": 0}
    for name, w in fw.items():
        for explain_all in (False, True):
            want = eb.score(w, explain_all=explain_all)
            got = cb.score(w, explain_all=explain_all)
            assert got == want, name          # every field: score, threshold, words, scope
        for r in want:
            seen["image"] += r.model_scope == "image"
            seen["fallback"] += r.fallback
            seen["anomaly"] += r.is_anomaly
            seen["unseen"] += any(d.get("feature") == "unseen_executables" for d in r.deviations)
        for key in {eb.key_of(i) for i in w.image}:
            _, model, _ = eb.model_for(next(i for i in w.image if eb.key_of(i) == key))
            _, cmodel, _ = cb.model_for(next(i for i in w.image if cb.key_of(i) == key))
            rows = [j for j, i in enumerate(w.image) if eb.key_of(i) == key]
            exes = [w.executables[j] for j in rows]
            a = model.anomaly_score(w.X[rows], exes)
            assert np.array_equal(cmodel.anomaly_score(w.X[rows], exes), a)
            seen["novelty"] += int((model.novelty(w.X[rows]) > 0).sum())
        _forest_matches_sklearn(eb, cb, w.X)
    # the comparison covered what it claims to
    assert all(seen.values()), seen
    assert set(cb.models) == set(eb.models) and len(cb.models) >= 2


def test_robust_scaler_nan_and_large_batches():
    fw = make_windows()
    eb = EnvironmentBaselines("prod", params={"scaler": "robust", "n_estimators": 30}).fit(fw)
    cb = compile_baselines(eb)
    assert cb.score(fw, explain_all=True) == eb.score(fw, explain_all=True)
    rng = np.random.default_rng(3)
    X = np.repeat(fw.X, 40, axis=0) + rng.integers(-5, 40, size=(len(fw) * 40, fw.X.shape[1]))
    assert X.shape[0] > 2048                 # several row chunks in the compiled descent
    _forest_matches_sklearn(eb, cb, X)
    # a NaN goes where scikit-learn's Tree.apply sends it (missing_go_to_left, else right)
    Xn = X[:300].copy()
    Xn[::3, FEATURE_INDEX["outbound_conns"]] = np.nan
    model, cmodel = eb.models["registry.example.com/a:1"], cb.models["registry.example.com/a:1"]
    assert np.array_equal(cmodel._forest_scores(Xn), model._forest_scores(Xn))


def test_compile_refuses_a_forest_it_cannot_match(monkeypatch):
    from model.compiled import CompileError

    eb = EnvironmentBaselines("prod", params={"n_estimators": 10}).fit(make_windows())
    model = eb.models["registry.example.com/a:1"]
    model._forest_leaves(len(model.feature_names))
    leaves, denom = model._leaf_cache
    monkeypatch.setattr(model, "_leaf_cache", (leaves, denom * 1.5))
    with pytest.raises(CompileError, match="score_samples"):
        compile_model(model)


def test_npz_round_trip_needs_no_pickle(scenario):
    _, eb, cb = scenario
    data = cb.fallback.to_npz_bytes()
    with np.load(__import__("io").BytesIO(data), allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    back = CompiledModel.from_npz_bytes(data)
    X = np.vstack([eb.fallback.max_ * 3, eb.fallback.median_])
    assert np.array_equal(back.anomaly_score(X, [["sh"], ["nc"]]),
                          eb.fallback.anomaly_score(X, [["sh"], ["nc"]]))
    assert back.vocabulary_ == eb.fallback.vocabulary_ and back.feature_names == tuple(eb.fallback.feature_names)


# --------------------------------------------------------------------------- the model store

@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "models"
    r.mkdir(mode=0o700)
    return r


def _saved(root: Path):
    fw = make_windows()
    eb = EnvironmentBaselines("prod").fit(fw)
    ms = ModelStore(root)
    version = ms.save(eb, training_range=(1.0, 2.0), window_s=60)
    return ms, eb, fw, version


def test_store_round_trip(root):
    ms, eb, fw, version = _saved(root)
    m = ms.read_manifest("prod")
    for entry in m["models"].values():
        c = entry["compiled"]
        assert c["file"].endswith(".npz")
        data = (root / "prod" / version / c["file"]).read_bytes()
        assert __import__("hashlib").sha256(data).hexdigest() == c["sha256"]
    assert (root / "prod" / version / m["models"][FALLBACK_KEY]["compiled"]["file"]).stat().st_mode & 0o077 == 0
    cb = ms.load_compiled("prod")
    assert isinstance(cb, CompiledBaselines) and cb.version == version
    assert cb.window_counts == eb.window_counts and cb.min_windows == eb.min_windows
    assert cb.score(fw, explain_all=True) == eb.score(fw, explain_all=True)
    # c:3 (10 windows) is scored by the fallback, and says so
    r = cb.score(fw.select(np.array(fw.image) == "registry.example.com/c:3"))[0]
    assert r.fallback and r.model_scope == "environment" and "10 training windows" in r.explanation
    ms.verify("prod")


def test_tampered_npz_refused(root):
    ms, _, _, version = _saved(root)
    entry = ms.read_manifest("prod")["models"]["registry.example.com/a:1"]["compiled"]
    path = root / "prod" / version / entry["file"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UntrustedModelError, match="sha256 mismatch"):
        ms.load_compiled("prod")
    with pytest.raises(UntrustedModelError, match="sha256 mismatch"):
        ms.verify("prod")


def test_group_writable_npz_refused(root):
    ms, _, _, version = _saved(root)
    entry = ms.read_manifest("prod")["models"][FALLBACK_KEY]["compiled"]
    os.chmod(root / "prod" / version / entry["file"], 0o620)
    with pytest.raises(UntrustedModelError, match="writable by group"):
        ms.load_compiled("prod")


def test_store_without_compiled_files_falls_back_then_compiles(root, caplog):
    from scheduler import cli

    ms, eb, fw, version = _saved(root)
    vdir = root / "prod" / version
    manifest = json.loads((vdir / "manifest.json").read_text())
    for entry in manifest["models"].values():     # as a store saved before compiled files
        (vdir / entry.pop("compiled")["file"]).unlink()
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="model.store"):
        cb = ms.load_compiled("prod")
    assert "stowaway compile" in caplog.text
    assert cb.version == version and cb.score(fw) == eb.score(fw)
    assert cli.main(["compile", "--models", str(root)]) == 0
    assert all(e.get("compiled") for e in ms.read_manifest("prod")["models"].values())
    caplog.clear()
    with caplog.at_level("WARNING", logger="model.store"):
        assert ms.load_compiled("prod").score(fw, explain_all=True) == eb.score(fw, explain_all=True)
    assert "stowaway compile" not in caplog.text


# --------------------------------------------------------------------------- the daemon

def _daemon_dir(tmp: Path) -> Path:
    """A daemon config (test_daemon's) whose model dir holds trained baselines of its environment."""
    from test_daemon import DNS_HEADER, _osquery_lines, dns_line, write_config

    cfg = write_config(tmp)
    (tmp / "osqueryd.results.log").write_text("\n".join(_osquery_lines()) + "\n")
    t0 = 1795805040.0
    (tmp / "zeek" / "dns.log").write_text(DNS_HEADER + "".join(
        dns_line(t0 + 3 * i, "172.17.0.3", f"n{i % 7}.svc.internal", f"C{i}") for i in range(100)))
    (tmp / "models").mkdir(mode=0o700)
    ModelStore(tmp / "models").save(EnvironmentBaselines("default").fit(make_windows()), window_s=60)
    return cfg


def test_daemon_scores_without_scikit_learn(tmp_path):
    """A fresh interpreter imports the daemon, starts it on a model dir with trained baselines,
    scores windows through the engine and directly, and never imports sklearn, scipy or joblib."""
    cfg = _daemon_dir(tmp_path)
    np.save(tmp_path / "X.npy", make_windows().X)
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from scheduler.config import load_config
        from scheduler.daemon import Daemon
        d = Daemon(load_config({str(cfg)!r}))
        assert type(d.baselines).__name__ == "CompiledBaselines", type(d.baselines)
        assert d.model_version and d.pipeline.baselines is d.baselines
        scored = []
        d.pipeline.on_window_scored = scored.append
        d.collect_once()
        d.score_once(now=time.time() + 3600)
        import numpy as np
        from model.features import FeatureWindows
        X = np.load({str(tmp_path / 'X.npy')!r})
        n = X.shape[0]
        fw = FeatureWindows(X=X, container_id=["c"] * n, image=["registry.example.com/a:1"] * n,
                            host=["h1"] * n, window_start=np.arange(n) * 60.0,
                            window_end=np.arange(n) * 60.0 + 60, environment="default",
                            executables=[("sh", "nc")] * n)
        direct = d.baselines.score(fw)
        d.close()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy", "joblib"))
        print(len(scored), len(direct), sum(r.fallback for r in scored),
              sum(r.model_scope == "image" for r in direct), heavy)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    n_scored, n_direct, n_fallback, n_image, heavy = r.stdout.strip().splitlines()[-1].split(" ", 4)
    assert int(n_scored) >= 4 and int(n_fallback) == int(n_scored)   # webapp: the fallback's
    assert int(n_direct) == int(n_image) == 150                       # a:1 has its own model
    assert heavy == "[]"


def test_daemon_retrain_swaps_compiled_baselines_in(tmp_path):
    from scheduler.config import load_config
    from scheduler.daemon import Daemon

    cfg = load_config(_daemon_dir(tmp_path))
    cfg.model.min_windows = 5
    d = Daemon(cfg)
    try:
        first = d.model_version
        d.pipeline.collect_windows = True
        d.collect_once()
        d.score_once(now=time.time() + 3600)
        assert sum(len(fw) for fw in d.pipeline.collected) >= 5
        assert d.retrain_once()
        assert d.retrains == 1
        assert isinstance(d.pipeline.baselines, CompiledBaselines)
        assert d.model_version != first and d.pipeline.baselines.version == d.model_version
        # the child trained on the stored windows: webapp now has an image model of its own
        assert "localhost/webapp:1.4" in d.pipeline.baselines.models
        d.cancel_retrain()
        assert not d.retrain_once()            # shutting down: no new child
    finally:
        d.close()
