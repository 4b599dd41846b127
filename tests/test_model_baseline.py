"""ImageBaseline / EnvironmentBaselines on synthetic matrices: API, threshold, cold start, explanations."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from model.baseline import (EnvironmentBaselines, ImageBaseline, explain, normalise_image, parse_image)
from model.features import FEATURE_INDEX, FEATURE_NAMES, FeatureWindows

F = len(FEATURE_NAMES)


def normal_matrix(n: int, seed: int = 0) -> np.ndarray:
    """Windows of a steady service: ~20 conns to 3 peers, 6 DNS queries, no failures."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, F))
    X[:, FEATURE_INDEX["processes_started"]] = rng.poisson(30, n)
    X[:, FEATURE_INDEX["distinct_executables"]] = 2
    X[:, FEATURE_INDEX["network_tool_processes"]] = rng.poisson(18, n)
    X[:, FEATURE_INDEX["outbound_conns"]] = rng.poisson(20, n)
    X[:, FEATURE_INDEX["distinct_remote_addrs"]] = rng.integers(2, 4, n)
    X[:, FEATURE_INDEX["distinct_remote_ports"]] = 3
    X[:, FEATURE_INDEX["dns_queries"]] = rng.integers(4, 9, n)
    X[:, FEATURE_INDEX["dns_label_entropy_mean"]] = 1.58
    X[:, FEATURE_INDEX["bytes_out"]] = rng.normal(1700, 80, n)
    X[:, FEATURE_INDEX["container_age_s"]] = np.arange(n) * 30.0
    return X


def windows(X: np.ndarray, image: str, prefix: str = "c") -> FeatureWindows:
    n = X.shape[0]
    return FeatureWindows(X=X, container_id=[f"{prefix}{i % 3}" for i in range(n)], image=[image] * n,
                          host=["h"] * n, window_start=np.arange(n) * 30.0, window_end=np.arange(n) * 30.0 + 30,
                          environment="test")


def test_image_key_normalisation():
    assert normalise_image("nginx") == "docker.io/library/nginx:latest"
    assert normalise_image("nginx:1.25") == "docker.io/library/nginx:1.25"
    assert normalise_image("bitnami/redis:7") == "docker.io/bitnami/redis:7"
    assert normalise_image("localhost/webapp:1.4") == "localhost/webapp:1.4"
    assert normalise_image("registry.example.com:5000/team/app:2") == "registry.example.com:5000/team/app:2"
    assert normalise_image("localhost/webapp:1.4", grouping="repository") == "localhost/webapp"
    d = "sha256:" + "ab" * 32
    assert normalise_image(f"quay.io/org/app@{d}", grouping="digest") == f"quay.io/org/app@{d}"
    assert normalise_image("quay.io/org/app:3", image_id="ab" * 32, grouping="digest") == f"quay.io/org/app@{d}"
    assert normalise_image("quay.io/org/app:3", grouping="digest") == "quay.io/org/app:3"   # no digest known
    assert parse_image("LocalHost/WebApp:1.4").repository == "webapp"
    with pytest.raises(ValueError):
        normalise_image("x", grouping="nope")


def test_estimator_api_and_threshold():
    X = normal_matrix(400)
    m = ImageBaseline(random_state=0).fit(X)
    assert clone(m).get_params() == m.get_params()
    s = m.anomaly_score(X)
    assert np.allclose(m.score_samples(X), -s)
    assert np.allclose(m.decision_function(X), m.threshold_ - s)
    assert set(np.unique(m.predict(X))) <= {-1, 1}
    # threshold = 0.99 quantile of training scores + margin: no training window above it
    assert m.threshold_ == pytest.approx(np.quantile(s, 0.99) + 0.05)
    assert (m.predict(X) == 1).all()
    with pytest.raises(ValueError):
        ImageBaseline().fit(X[:, :5])


def test_threshold_is_robust_to_a_few_training_outliers():
    X = normal_matrix(500)
    clean = ImageBaseline().fit(X).threshold_
    dirty = X.copy()
    dirty[:3, FEATURE_INDEX["failed_conns"]] = 200          # three odd windows in training
    assert ImageBaseline().fit(dirty).threshold_ == pytest.approx(clean, abs=0.05)


def test_flags_out_of_range_behaviour_and_explains_it():
    X = normal_matrix(400)
    m = ImageBaseline().fit(X)
    probe = np.median(X, axis=0)[None, :].copy()
    assert m.predict(probe)[0] == 1
    sweep = probe.copy()
    sweep[0, FEATURE_INDEX["distinct_remote_addrs"]] = 14
    sweep[0, FEATURE_INDEX["failed_conns"]] = 49
    assert m.predict(sweep)[0] == -1
    devs = m.deviations(sweep[0])
    assert {d["feature"] for d in devs[:2]} == {"failed_conns", "distinct_remote_addrs"}
    text = explain(devs)
    assert "distinct_remote_addrs=14, baseline median 3" in text or "distinct_remote_addrs=14, baseline median 2" in text


def test_unseen_executables_raise_the_score():
    X = normal_matrix(200)
    exes = [("sh", "sleep", "wget")] * 200
    m = ImageBaseline().fit(X, executables=exes)
    row = np.median(X, axis=0)[None, :]
    base = m.anomaly_score(row, [("sleep", "wget")])[0]
    new = m.anomaly_score(row, [("cat", "id", "ps", "sleep", "wget")])[0]
    assert new == pytest.approx(base + 3 * m.unseen_weight)
    assert m.unseen([("cat", "wget")]) == [["cat"]]
    assert ImageBaseline().fit(X).unseen([("cat",)]) == [[]]      # no vocabulary: term is off


def test_cold_start_uses_environment_model_and_says_so():
    big = windows(normal_matrix(120), "registry.example.com/shop/web:2")
    small = windows(normal_matrix(20, seed=1), "registry.example.com/shop/new:1", prefix="n")
    allw = FeatureWindows.concat([big, small])
    eb = EnvironmentBaselines("prod", min_windows=50).fit(allw)
    assert list(eb.models) == ["registry.example.com/shop/web:2"]
    res = eb.score(allw)
    web = [r for r in res if r.image_key.endswith("web:2")]
    new = [r for r in res if r.image_key.endswith("new:1")]
    assert all(not r.fallback and r.model_scope == "image" for r in web)
    assert all(r.fallback and r.model_scope == "environment" for r in new)
    assert "20 training windows (< 50)" in new[0].explanation
    assert new[0].threshold == pytest.approx(eb.fallback.threshold_)
    # the minimum is configurable
    eb2 = EnvironmentBaselines("prod", min_windows=10).fit(allw)
    assert len(eb2.models) == 2


def test_environment_fit_is_deterministic_and_parallel_equivalent():
    allw = FeatureWindows.concat([windows(normal_matrix(80), "a:1"), windows(normal_matrix(90, 2), "b:1", "b")])
    r1 = [r.score for r in EnvironmentBaselines("e").fit(allw).score(allw)]
    r2 = [r.score for r in EnvironmentBaselines("e").fit(allw).score(allw)]
    r3 = [r.score for r in EnvironmentBaselines("e").fit(allw, n_jobs=2, backend="threading").score(allw)]
    assert r1 == r2 == r3
    r4 = [r.score for r in EnvironmentBaselines("e", params={"random_state": 7}).fit(allw).score(allw)]
    assert r4 != r1


def test_environment_fit_does_not_depend_on_the_order_windows_arrive_in():
    """A replay's commit chunk, a daemon's polls and a window store's pages hand the same
    windows over in different orders; the baselines must come out the same. (Over 256 windows
    an image: below that the forest's subsample is every window, in any order.)"""
    allw = FeatureWindows.concat([windows(normal_matrix(400), "a:1"), windows(normal_matrix(300, 2), "b:1", "b")])
    allw.executables = [[f"exe{i % 4}"] for i in range(len(allw))]
    probe = windows(normal_matrix(40, 5) * 1.7, "a:1", "p")
    want = [r.score for r in EnvironmentBaselines("e").fit(allw).score(probe)]
    for seed in (1, 2):
        shuffled = allw.select(np.random.default_rng(seed).permutation(len(allw)))
        got = [r.score for r in EnvironmentBaselines("e").fit(shuffled).score(probe)]
        assert got == want


def test_score_result_fields():
    allw = windows(normal_matrix(60), "a:1")
    r = EnvironmentBaselines("e").fit(allw).score(allw.select(np.arange(60) < 1))[0]
    d = r.to_dict()
    for k in ("score", "threshold", "is_anomaly", "fallback", "model_scope", "explanation", "deviations"):
        assert k in d
    assert isinstance(r.is_anomaly, bool) and r.image_key == "docker.io/library/a:1"


def test_fast_scoring_path_equals_scikit_learn():
    """The fast / threaded scoring gives exactly the pipeline's score_samples."""
    X = normal_matrix(3000)
    m = ImageBaseline().fit(X)
    assert m.fast_path_
    big = np.vstack([normal_matrix(25_000, seed=5), X])          # > 20,000 rows: split over threads
    np.testing.assert_array_equal(m._forest_scores(big), m.pipeline_.score_samples(big))
    single = ImageBaseline(score_threads=1).fit(X)
    np.testing.assert_array_equal(single._forest_scores(big), m._forest_scores(big))
    sub = ImageBaseline(max_samples=0.5).fit(X)                   # another forest shape
    np.testing.assert_array_equal(sub._forest_scores(X[:500]), sub.pipeline_.score_samples(X[:500]))


def test_model_from_another_scikit_learn_uses_the_public_scorer():
    import pickle
    X = normal_matrix(300)
    m = ImageBaseline().fit(X)
    m2 = pickle.loads(pickle.dumps(m))
    assert not hasattr(m2, "_leaf_cache")
    np.testing.assert_array_equal(m2.anomaly_score(X), m.anomaly_score(X))
    m2.fit_sklearn_version_ = "0.0"                    # as if saved by another version

    def boom(_X):
        raise AssertionError("fast path used for a model fitted by another scikit-learn")

    m2._fast_forest_scores = boom
    np.testing.assert_allclose(m2.anomaly_score(X), m.anomaly_score(X), rtol=0, atol=1e-12)


def test_explain_takes_every_deviation_score_returns():
    """score() puts an `unseen_executables` entry (names, no training range) first in a window's
    deviations; explain() of that very list must describe it, not raise KeyError."""
    X = normal_matrix(200)
    exes = [("sh", "sleep", "wget")] * 200
    m = ImageBaseline().fit(X, executables=exes)
    sweep = np.median(X, axis=0).copy()
    sweep[FEATURE_INDEX["failed_conns"]] = 49
    devs = [{"feature": "unseen_executables", "value": 2, "names": ["cat", "id"]}] + m.deviations(sweep)
    text = explain(devs)
    assert text.startswith("executables never seen for this image in training: cat, id; ")
    assert "failed_conns=49, baseline median" in text and "(training range " in text
    # an entry with neither names nor a range still reads as feature=value
    assert explain([{"feature": "exec_sessions", "value": 3.0}]) == "exec_sessions=3"
    assert explain([{"feature": "unseen_executables", "value": 1, "names": ["nc"]}]) == \
        "executables never seen for this image in training: nc"
