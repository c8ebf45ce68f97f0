"""Engine tests for GeneralizedKMeans and the loss registry (no FiftyOne, no MongoDB)."""

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustering import GeneralizedKMeans, Loss, available_losses, get_loss, register_loss
from clustering.engine import _kernels as K
from clustering.engine.kmeans import NotFittedError
from clustering.datasets import contaminated_blobs
from clustering.engine.losses import CoordinateLoss

LOSSES = ["absolute", "correntropy", "cosine", "epsilon_insensitive", "geometric_median",
          "huber", "pseudo_huber", "squared"]
PARAMETRIZED = {"huber": "delta", "pseudo_huber": "delta", "correntropy": "sigma",
                "epsilon_insensitive": "epsilon"}
COORDINATEWISE = ["absolute", "huber", "pseudo_huber"]


def blobs(n=150, d=5, k=3, seed=0, spread=4.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * spread
    return centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))


@pytest.fixture(params=[True, False], ids=["numba", "torch"])
def backend(request, monkeypatch):
    """Run a test on the numba kernels and on the pure-torch path."""
    if request.param and not K.NUMBA_ENABLED:
        pytest.skip("numba not installed")
    monkeypatch.setattr(K, "NUMBA_ENABLED", request.param)
    return request.param


def assert_nonincreasing(history, rtol=1e-9):
    history = np.asarray(history)
    slack = rtol * np.abs(history[:-1]) + 1e-12
    assert np.all(np.diff(history) <= slack), history


# ------------------------------------------------------------------ registry
def test_registry_lists_builtin_losses():
    assert set(LOSSES) <= set(available_losses())
    assert available_losses() == sorted(available_losses())
    for name in LOSSES:
        loss = get_loss(name)
        assert isinstance(loss, Loss) and loss.name == name
        assert loss.param_name == PARAMETRIZED.get(name)


def test_get_loss_aliases_and_instances():
    assert get_loss("square") is get_loss("squared")
    assert get_loss("L1") is get_loss("absolute")
    assert get_loss("pseudo-huber") is get_loss("pseudo_huber")
    assert get_loss(get_loss("huber")) is get_loss("huber")


def test_unknown_loss_lists_valid_ones():
    with pytest.raises(ValueError, match="Unknown loss 'nope'.*absolute.*squared"):
        get_loss("nope")
    with pytest.raises(ValueError, match="Valid losses"):
        GeneralizedKMeans(2, loss="nope").fit(blobs())


class LogCoshLoss(CoordinateLoss):
    """sum_j log(cosh(x_j - mu_j)): only ``rho``; generic pairwise and L-BFGS update."""

    name = "test_logcosh"

    def rho(self, r, param):
        return r.abs() + torch.nn.functional.softplus(-2 * r.abs()) - np.log(2.0)


def test_register_custom_loss_and_fit():
    register_loss(LogCoshLoss, overwrite=True)
    assert "test_logcosh" in available_losses()
    with pytest.raises(ValueError, match="already registered"):
        register_loss(LogCoshLoss)
    X = blobs(n=60, d=3, k=3)
    km = GeneralizedKMeans(3, loss="test_logcosh", random_state=0, dtype="float64",
                           max_iter=10).fit(X)
    assert_nonincreasing(km.objective_history_)
    D = km.transform(X)
    np.testing.assert_allclose(km.sample_losses_, D[np.arange(len(X)), km.labels_], rtol=1e-9)
    assert np.all(D[np.arange(len(X)), km.labels_] <= D.min(1) + 1e-9)


def test_register_rejects_non_losses():
    with pytest.raises(TypeError):
        register_loss(object())


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, X, match", [
    (dict(n_clusters=0), None, "n_clusters=0 must be an integer between 1"),
    (dict(n_clusters=500), None, r"n_clusters=500 .*number of samples \(150\)"),
    (dict(n_clusters=2, loss="huber", loss_param=-1.0), None, "positive finite"),
    (dict(n_clusters=2, loss="correntropy", loss_param=0), None, "sigma.*positive"),
    (dict(n_clusters=2, loss="epsilon_insensitive", loss_param=float("nan")), None, "epsilon"),
    (dict(n_clusters=2, loss="squared", loss_param=1.0), None, "takes no parameter"),
    (dict(n_clusters=2, init="kmeans"), None, "init must be"),
    (dict(n_clusters=2, init=np.zeros((3, 5))), None, r"\(2, 5\), got \(3, 5\)"),
    (dict(n_clusters=2, n_init=0), None, "n_init"),
    (dict(n_clusters=2, tol=-1), None, "tol"),
    (dict(n_clusters=2), np.zeros(10), "2-D"),
    (dict(n_clusters=2), np.zeros((2, 3, 4)), "2-D"),
    (dict(n_clusters=2, dtype="int8"), None, "dtype"),
    (dict(n_clusters=2, prune="yes"), None, "prune"),
    (dict(n_clusters=2, loss="pseudo_huber", loss_param=1e-30), None,
     r"delta.*1e-30 is too small for float32.*dtype='float64'"),
])
def test_invalid_arguments_raise(kwargs, X, match):
    X = blobs() if X is None else X
    with pytest.raises(ValueError, match=match):
        GeneralizedKMeans(**kwargs).fit(X)


def test_nan_and_inf_rows_are_counted():
    X = blobs()
    X[3, 1] = np.nan
    X[7] = np.inf
    X[9, 0] = -np.inf
    with pytest.raises(ValueError, match="NaN or infinity in 3 of 150 rows"):
        GeneralizedKMeans(2).fit(X)
    with pytest.raises(ValueError, match="NaN or infinity in 3 of 150 rows"):
        GeneralizedKMeans(2).fit(torch.from_numpy(X))


def test_use_before_fit_and_wrong_dimension():
    km = GeneralizedKMeans(2)
    for call in (lambda: km.predict(blobs()), lambda: km.transform(blobs()),
                 lambda: km.representatives()):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()
    km.fit(blobs(d=5))
    with pytest.raises(ValueError, match="X has 4 features, but .* fitted with 5"):
        km.predict(blobs(d=4))
    with pytest.raises(ValueError, match="positive integer"):
        km.representatives(0)


# -------------------------------------------------------------- fitted model
@pytest.mark.parametrize("loss", LOSSES)
def test_fitted_attributes_are_consistent(loss):
    X = blobs(n=150, d=5, k=3, seed=1)
    km = GeneralizedKMeans(3, loss=loss, random_state=0, dtype="float64").fit(X)
    n, k = len(X), 3
    assert km.cluster_centers_.shape == (k, 5) and isinstance(km.cluster_centers_, np.ndarray)
    assert km.labels_.shape == (n,) and km.labels_.dtype == np.int64
    assert km.sample_losses_.shape == (n,) and np.all(km.sample_losses_ >= -1e-12)
    assert isinstance(km.objective_, float)
    assert km.objective_ == pytest.approx(km.sample_losses_.sum(), rel=1e-12)
    assert km.n_iter_ == len(km.objective_history_) >= 1
    assert km.objective_history_[-1] == pytest.approx(km.objective_, rel=1e-6, abs=1e-9)
    assert_nonincreasing(km.objective_history_)
    assert km.n_features_in_ == 5
    if loss in PARAMETRIZED:
        assert isinstance(km.loss_param_, float) and km.loss_param_ > 0
    else:
        assert km.loss_param_ is None
    D = km.transform(X)
    assert D.shape == (n, k)
    np.testing.assert_allclose(D[np.arange(n), km.labels_], km.sample_losses_,
                               rtol=1e-7, atol=1e-9)
    assert np.all(km.sample_losses_ <= D.min(1) + 1e-7 * np.abs(D).max())  # exact assignment
    np.testing.assert_array_equal(km.predict(X), km.labels_)
    np.testing.assert_array_equal(km.fit_predict(X), km.labels_)


@pytest.mark.parametrize("loss", LOSSES)
def test_float32_default_and_reproducible(loss):
    X = blobs(n=200, d=6, k=4, seed=2).astype(np.float32)
    a = GeneralizedKMeans(4, loss=loss, random_state=7, n_init=2).fit(X)
    b = GeneralizedKMeans(4, loss=loss, random_state=7, n_init=2).fit(X)
    assert a.cluster_centers_.dtype == np.float32
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.objective_ == b.objective_ and a.loss_param_ == b.loss_param_


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loss=st.sampled_from(LOSSES), seed=st.integers(0, 2**16), n=st.integers(2, 60),
       d=st.integers(1, 5), k=st.integers(1, 6), rounded=st.booleans(),
       init=st.sampled_from(["k-means++", "random"]))
def test_objective_never_increases(loss, seed, n, d, k, rounded, init):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10)
    if rounded:  # ties and duplicate points
        X = np.round(X)
    km = GeneralizedKMeans(min(k, n), loss=loss, init=init, max_iter=12, tol=0.0,
                           random_state=seed, dtype="float64").fit(X)
    assert_nonincreasing(km.objective_history_)
    assert np.all(np.isfinite(km.cluster_centers_))
    assert km.objective_ <= km.objective_history_[0] * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("loss", LOSSES)
def test_numba_and_torch_paths_agree(loss, monkeypatch):
    if not K.NUMBA_ENABLED:
        pytest.skip("numba not installed")
    X = blobs(n=120, d=4, k=3, seed=3)
    init = X[[0, 50, 100]]
    fits = []
    for enabled in (True, False):
        monkeypatch.setattr(K, "NUMBA_ENABLED", enabled)
        fits.append(GeneralizedKMeans(3, loss=loss, init=init, loss_param=1.5 if loss in
                                      PARAMETRIZED else None, max_iter=8, tol=0,
                                      dtype="float64").fit(X))
    np.testing.assert_array_equal(fits[0].labels_, fits[1].labels_)
    np.testing.assert_allclose(fits[0].cluster_centers_, fits[1].cluster_centers_,
                               rtol=1e-6, atol=1e-8)
    assert fits[0].objective_ == pytest.approx(fits[1].objective_, rel=1e-8)


@pytest.mark.parametrize("loss", COORDINATEWISE + ["squared", "correntropy"])
def test_bound_pruning_matches_full_assignment(loss, backend):
    """Every iteration's (pruned) assignment equals brute force over the loss matrix,
    and pruning changes nothing but the work done."""
    X = blobs(n=300, d=8, k=6, seed=4, spread=1.5)
    for iterations in range(1, 9):
        kwargs = dict(loss=loss, init=X[:6], max_iter=iterations, tol=0, dtype="float64")
        pruned = GeneralizedKMeans(6, prune=True, **kwargs).fit(X)
        D = pruned.transform(X)
        assert np.all(pruned.sample_losses_ <= D.min(1) + 1e-9)
        plain = GeneralizedKMeans(6, prune=False, **kwargs).fit(X)
        np.testing.assert_array_equal(pruned.labels_, plain.labels_)
        np.testing.assert_allclose(pruned.cluster_centers_, plain.cluster_centers_, rtol=1e-9)


@pytest.mark.parametrize("bounds", ["elkan", "hamerly"])
@pytest.mark.parametrize("loss", COORDINATEWISE)
def test_long_rows_pruned_like_a_full_assignment(loss, bounds, monkeypatch):
    """d > 32 on the numba path: Elkan's per-(sample, center) bounds (or, when
    they would not fit, Hamerly's) give every iteration the labels and centers
    of unpruned Lloyd iterations, with overlapping clusters, an empty cluster
    reseeded on the way and duplicate centers (ties go to the lowest index)."""
    if not K.NUMBA_ENABLED:
        pytest.skip("numba not installed")
    from clustering.engine import kmeans

    if bounds == "hamerly":
        monkeypatch.setattr(kmeans._Engine, "_elkan", lambda self, k: False)
    scans = []
    scan = K.coord_scan
    monkeypatch.setattr(K, "coord_scan", lambda *a: scans.append(1) or scan(*a))
    X = blobs(n=400, d=40, k=8, seed=11, spread=0.4)
    init = np.vstack([X[:7], X[6:7], X.mean(0) + 50.0])  # a tie, and a center nobody picks
    for iterations in (1, 2, 3, 6, 12):
        kwargs = dict(loss=loss, init=init, max_iter=iterations, tol=0, dtype="float64")
        pruned = GeneralizedKMeans(9, prune=True, **kwargs).fit(X)
        plain = GeneralizedKMeans(9, prune=False, **kwargs).fit(X)
        np.testing.assert_array_equal(pruned.labels_, plain.labels_)
        np.testing.assert_allclose(pruned.cluster_centers_, plain.cluster_centers_, rtol=1e-9)
        D = pruned.transform(X)
        np.testing.assert_array_equal(pruned.labels_, D.argmin(1))
    assert bool(scans) == (bounds == "elkan")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,delta", [(K.ABS, 1.0), (K.HUBER, 0.7), (K.PSEUDO_HUBER, 0.7)])
def test_elkan_scan_matches_brute_force(kind, delta, dtype):
    """Rounds of moved centers (small steps, a jump, a duplicate): each scan finds
    the brute-force nearest center and leaves valid lower bounds behind."""
    if not K.NUMBA_ENABLED:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(kind)
    X = rng.normal(size=(500, 48)).astype(dtype)
    C = rng.normal(size=(12, 48)).astype(dtype) * 0.3
    bounds = np.empty((500, 12), dtype=dtype)
    labels, _, _ = K.coord_assign(torch.from_numpy(X), torch.from_numpy(C), kind, delta,
                                  bounds=bounds)
    drift = np.zeros(12)
    lipschitz = 1.0 if kind == K.ABS else delta
    for step in range(6):
        new = C + rng.normal(size=C.shape).astype(dtype) * 0.05
        if step == 2:
            new[3] = X[17]  # a jump (as when an empty cluster is reseeded)
        if step == 4:
            new[5] = new[2]  # a tie: the lowest index wins
        drift += lipschitz * np.abs(new.astype(np.float64) - C).sum(1)
        C = new
        labels, best, pairs = K.coord_scan(torch.from_numpy(X), torch.from_numpy(C), labels,
                                           bounds, drift, kind, delta)
        exact = K.rho_torch(torch.from_numpy(X[:, None, :].astype(np.float64) - C[None]),
                            kind, delta).sum(-1).numpy()
        gap = np.sort(exact, 1)[:, 1] - exact.min(1)
        clear = gap > 1e-4 * exact.min(1) + 1e-30  # float32 rounding decides closer calls
        np.testing.assert_array_equal(labels.numpy()[clear], exact.argmin(1)[clear])
        np.testing.assert_allclose(best.numpy(), exact.min(1), rtol=1e-4, atol=1e-4)
        assert np.all(bounds - drift <= exact + 1e-5 * (exact + drift))  # up to rounding
        assert 0 < pairs < 500 * 11


def test_n_init_keeps_the_best_restart():
    X = blobs(n=200, d=4, k=5, seed=5, spread=2.0)
    one = GeneralizedKMeans(5, init="random", random_state=3, dtype="float64").fit(X)
    many = GeneralizedKMeans(5, init="random", n_init=6, random_state=3, dtype="float64").fit(X)
    assert many.objective_ <= one.objective_


@pytest.mark.parametrize("loss", LOSSES)
def test_duplicates_with_k_equal_to_n(loss):
    X = np.repeat(np.array([[1.0, 2.0], [3.0, -1.0], [-2.0, 0.5]]), [4, 3, 1], axis=0)
    km = GeneralizedKMeans(len(X), loss=loss, random_state=0, dtype="float64").fit(X)
    assert km.objective_ == pytest.approx(0.0, abs=1e-9)
    assert set(km.labels_) <= set(range(len(X)))
    km = GeneralizedKMeans(len(X) - 1, loss=loss, init="random", random_state=1).fit(X)
    assert km.objective_ == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
def test_empty_cluster_is_reseeded(loss):
    X = blobs(n=120, d=3, k=3, seed=6)
    init = np.vstack([X[:3], X.mean(0) + 1e3])  # last center attracts no sample
    km = GeneralizedKMeans(4, loss=loss, init=init, max_iter=20, dtype="float64").fit(X)
    assert np.all(np.bincount(km.labels_, minlength=4) > 0)
    assert_nonincreasing(km.objective_history_)


def test_representatives():
    X = blobs(n=90, d=3, k=3, seed=7)
    init = np.vstack([X[:2], X.mean(0) + 1e3])
    km = GeneralizedKMeans(3, loss="huber", init=init, max_iter=0, dtype="float64").fit(X)
    reps = km.representatives(4)
    assert len(reps) == 3 and reps[2].size == 0  # the far center keeps no sample
    for j, idx in enumerate(reps[:2]):
        assert idx.dtype == np.int64 and 1 <= len(idx) <= 4
        assert np.all(km.labels_[idx] == j)
        losses = km.sample_losses_[idx]
        assert np.all(np.diff(losses) >= 0)
        assert losses[0] == km.sample_losses_[km.labels_ == j].min()
    assert [len(r) for r in km.representatives(1000)] == list(np.bincount(km.labels_, minlength=3))


def test_progress_reports_fractions_up_to_one():
    calls = []
    X = blobs(n=100, d=3, k=3)
    GeneralizedKMeans(3, n_init=3, random_state=0).fit(X, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in calls)
    assert any("restart 3/3" in m for _, m in calls)


def test_torch_tensor_input_and_params():
    X = torch.from_numpy(blobs(n=80, d=3, k=2))
    km = GeneralizedKMeans(2, loss="pseudo_huber", loss_param=2.0, device="cpu",
                           dtype="float64", random_state=0).fit(X)
    assert km.loss_param_ == 2.0 and km.cluster_centers_.dtype == np.float64
    assert km.get_params()["loss"] == "pseudo_huber"
    assert km.set_params(n_clusters=3).n_clusters == 3
    np.testing.assert_array_equal(km.predict(X), km.labels_)


def test_cosine_ignores_scale_and_handles_zero_rows():
    X = blobs(n=60, d=4, k=2, seed=8)
    X[:3] = 0.0
    km = GeneralizedKMeans(2, loss="cosine", random_state=0, dtype="float64").fit(X)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0)
    np.testing.assert_allclose(km.sample_losses_[:3], 1.0)
    scaled = GeneralizedKMeans(2, loss="cosine", init=km.cluster_centers_ * 7,
                               dtype="float64").fit(X * 3)
    np.testing.assert_array_equal(scaled.labels_, km.labels_)


def inlier_rows(R):
    """The residual rows the scale rules keep: norm <= 3x the median norm."""
    norms = np.linalg.norm(R, axis=1)
    return R[norms <= 3 * np.median(norms)]


SCALE_RULES = {
    "huber": lambda R: 1.345 * 1.4826 * np.median(np.abs(inlier_rows(R))),
    "pseudo_huber": lambda R: 1.345 * 1.4826 * np.median(np.abs(inlier_rows(R))),
    "correntropy": lambda R: np.median(np.linalg.norm(inlier_rows(R), axis=1)),
    "epsilon_insensitive": lambda R: 0.5 * np.median(np.linalg.norm(inlier_rows(R), axis=1)),
}


@pytest.mark.parametrize("loss", sorted(SCALE_RULES))
def test_default_parameter_is_the_documented_rule_at_the_settled_centers(loss):
    X = blobs(n=200, d=4, k=3, seed=9)
    init = X[[0, 70, 140]]
    km = GeneralizedKMeans(3, loss=loss, init=init, dtype="float64").fit(X)
    seeded = SCALE_RULES[loss](X - init[((X[:, None, :] - init[None]) ** 2).sum(-1).argmin(1)])
    settled = SCALE_RULES[loss](X - km.cluster_centers_[km.labels_])
    # re-estimated until it changes by < 5%: the rule at the centers it gives
    assert km.loss_param_ == pytest.approx(settled, rel=0.05)
    assert abs(km.loss_param_ - seeded) > 0.1 * seeded  # seeds are data points, not centers
    assert "re-estimated as the centers settled" in km.loss_param_rule_
    given = GeneralizedKMeans(3, loss=loss, loss_param=km.loss_param_, init=init).fit(X)
    assert given.loss_param_ == km.loss_param_ and given.loss_param_rule_ is None


# ----------------------------------------------------------- robustness
def inlier_scale(loss, d, sigma=1.0):
    """The parameter the rules give on uncontaminated N(0, sigma^2 I_d) residuals."""
    from scipy.stats import chi

    return {"huber": 1.345 * sigma, "pseudo_huber": 1.345 * sigma,
            "correntropy": chi.median(d) * sigma,
            "epsilon_insensitive": 0.5 * chi.median(d) * sigma}[loss]


@pytest.mark.parametrize("d", [1, 16])
@pytest.mark.parametrize("loss", sorted(SCALE_RULES))
def test_scale_estimates_ignore_20_percent_far_outliers(loss, d):
    rng = np.random.default_rng(d)
    R = rng.normal(size=(5000, d)) * 2.0
    R[:1000] = rng.normal(size=(1000, d)) * 100.0  # 20% far outlier rows
    estimate = get_loss(loss).default_param(torch.from_numpy(R))
    assert estimate == pytest.approx(inlier_scale(loss, d, sigma=2.0), rel=0.2)


@pytest.mark.parametrize("contamination", ["far", "cauchy"])
@pytest.mark.parametrize("loss", ["huber", "correntropy"])
def test_data_driven_parameter_at_20_percent_contamination(loss, contamination):
    X, _, _, _ = contaminated_blobs(contamination=contamination, fraction=0.2, random_state=5)
    km = GeneralizedKMeans(5, loss=loss, random_state=0).fit(X)
    assert km.loss_param_ == pytest.approx(inlier_scale(loss, X.shape[1]), rel=0.2)


def inlier_ari(loss, contamination, fraction, seed):
    from sklearn.metrics import adjusted_rand_score

    X, y, inliers, _ = contaminated_blobs(contamination=contamination, fraction=fraction,
                                          random_state=seed)
    labels = GeneralizedKMeans(5, loss=loss, random_state=seed).fit(X).labels_
    return adjusted_rand_score(y[inliers], labels[inliers])


@pytest.mark.parametrize("loss", ["absolute", "huber", "pseudo_huber", "correntropy",
                                  "geometric_median"])
def test_robust_losses_keep_the_clusters_at_10_percent_far_outliers(loss):
    """5 Gaussian clusters (d=32, n=2000), default parameters: k-means itself
    gives the outliers most centers (inlier ARI 0.00-0.50)."""
    scores = [inlier_ari(loss, "far", 0.1, seed) for seed in range(3)]
    assert np.mean(scores) >= 0.6, scores


@pytest.mark.parametrize("contamination, fraction", [("far", 0.1), ("far", 0.2), ("cauchy", 0.2)])
def test_correntropy_keeps_the_clusters_on_every_contaminated_set(contamination, fraction):
    scores = [inlier_ari("correntropy", contamination, fraction, seed) for seed in range(3)]
    assert np.mean(scores) >= 0.9 and min(scores) >= 0.8, scores


@pytest.mark.parametrize("loss", sorted(SCALE_RULES))
def test_parameter_from_a_pilot_sample_is_close_to_the_full_estimate(loss, monkeypatch):
    """Above max(5000, 100 k) samples the pilot is a uniform sample, and each
    estimate reads the residuals of max(1000, 2^18 / d) of its rows: the
    parameter stays within 5% of the estimate on every sample and residual."""
    import clustering.engine.kmeans as km

    X = blobs(n=12_000, d=64, k=8, seed=3).astype(np.float32)
    sampled = GeneralizedKMeans(8, loss=loss, random_state=0).fit(X)
    assert "on 5000 samples, residuals of 4096 of them)" in sampled.loss_param_rule_
    monkeypatch.setattr(km, "_PILOT_SAMPLES", len(X))
    monkeypatch.setattr(km, "_PARAM_ROWS", None)
    full = GeneralizedKMeans(8, loss=loss, random_state=0).fit(X)
    assert "on 12000 samples)" in full.loss_param_rule_
    assert sampled.loss_param_ == pytest.approx(full.loss_param_, rel=0.05)


@pytest.mark.parametrize("contamination", ["far", "cauchy"])
@pytest.mark.parametrize("loss", ["huber", "pseudo_huber", "correntropy", "epsilon_insensitive"])
def test_contaminated_blobs_recovered_with_a_pilot_sample(loss, contamination):
    """20,000 samples, 20% contaminated: the parameter comes from a pilot of
    5000, and the clusters are still found with the inliers' scale."""
    from sklearn.metrics import adjusted_rand_score

    X, y, inliers, _ = contaminated_blobs(n=20_000, contamination=contamination, fraction=0.2,
                                          random_state=1)
    km = GeneralizedKMeans(5, loss=loss, random_state=0).fit(X)
    assert "on 5000 samples)" in km.loss_param_rule_
    assert adjusted_rand_score(y[inliers], km.labels_[inliers]) > 0.99
    assert km.loss_param_ == pytest.approx(inlier_scale(loss, X.shape[1]), rel=0.25)


@pytest.mark.skipif(K.triton is None, reason="triton not installed")
def test_triton_kernel_in_interpreter_mode():
    """The CUDA kernel for coordinate-wise assignment, run by triton's CPU interpreter."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os, torch
        os.environ["TRITON_INTERPRET"] = "1"
        import clustering.engine._kernels as K
        g = torch.Generator().manual_seed(0)
        X, C = torch.randn(20, 11, generator=g), torch.randn(35, 11, generator=g)
        rows = torch.randperm(20, generator=g)[:7]
        for kind in (K.ABS, K.HUBER, K.PSEUDO_HUBER):
            for r in (None, rows):
                labels, best, second = K._triton_coord_assign(X, C, kind, 0.7, r)
                D = K.rho_torch((X if r is None else X[r])[:, None] - C[None], kind, 0.7).sum(-1)
                values, idx = D.sort(1)
                assert torch.equal(labels, idx[:, 0])
                assert torch.allclose(best, values[:, 0], rtol=1e-5)
                assert torch.allclose(second, values[:, 1], rtol=1e-5)
            full = K.rho_torch(X[:, None] - C[None], kind, 0.7).sum(-1)
            assert torch.allclose(K._triton_coord_pairwise(X, C, kind, 0.7), full, rtol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET="1", CLUSTERING_DISABLE_NUMBA="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("m,k,d", [(1, 1, 3), (7, 9, 5), (33, 50, 16), (10, 8, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiled_coord_assign_matches_brute_force(m, k, d, dtype):
    """The 4-sample x 8-center tiled kernels: tails, ties and the rows argument."""
    g = torch.Generator().manual_seed(m * 100 + k)
    X = torch.randn(m, d, generator=g).to(dtype)
    C = torch.cat([X[:1], torch.randn(k - 1, d, generator=g).to(dtype)])
    if k > 2:
        C[2] = C[1]  # a tie: the first of equal centers wins, second == best
    rows = torch.randperm(m, generator=g)[: max(1, m // 2)]
    for kind in (K.ABS, K.HUBER, K.PSEUDO_HUBER):
        full = K.rho_torch(X[:, None] - C[None], kind, 0.7).sum(-1)
        assert torch.allclose(K.coord_pairwise(X, C, kind, 0.7), full, rtol=1e-4, atol=1e-5)
        for r in (None, rows):
            labels, best, second = K.coord_assign(X, C, kind, 0.7, r)
            D = full if r is None else full[r]
            vals, _ = D.sort(1)
            assert torch.allclose(best, vals[:, 0], rtol=1e-4, atol=1e-4)
            assert torch.allclose(D.gather(1, labels[:, None])[:, 0], vals[:, 0], rtol=1e-4, atol=1e-4)
            if k > 1:
                assert torch.allclose(second, vals[:, 1], rtol=1e-4, atol=1e-4)
            else:
                assert torch.isinf(second).all()


@pytest.mark.parametrize("one_gemm", [True, False])
@pytest.mark.parametrize("k", [1, 7, 70])
@pytest.mark.parametrize("chunk", [300, 5000])
def test_gemm_nearest_and_second_nearest_match_brute_force(k, chunk, one_gemm, monkeypatch):
    """GEMM + top-2 scan (numba path when available): one GEMM for small
    problems or blocks of ``chunk`` samples (whole blocks, dense blocks with
    some rows wanted, gathered sparse rows)."""
    if not one_gemm:
        monkeypatch.setattr(K, "_ONE_GEMM", 0)
    rng = np.random.default_rng(k * chunk)
    X = torch.from_numpy(rng.normal(size=(1037, 12)).astype(np.float32))
    C = torch.from_numpy(rng.normal(size=(k, 12)).astype(np.float32))
    D = ((X[:, None, :].double() - C[None].double()) ** 2).sum(-1).numpy()
    order = np.sort(D, axis=1)
    sqnorm = (X * X).sum(1)
    dense = torch.arange(0, 1037, 2)  # half of each block: scanned whole, then picked
    sparse = torch.tensor([3, 500, 1036])  # gathered rows
    for rows in (None, dense, sparse):
        idx = np.arange(1037) if rows is None else rows.numpy()
        labels, best, second = K.sqeuclidean_nearest(X, C, sqnorm, chunk, rows, second=True)
        np.testing.assert_array_equal(labels.numpy(), D[idx].argmin(1))
        np.testing.assert_allclose(best.numpy(), order[idx, 0], rtol=1e-4, atol=1e-4)
        expected = order[idx, 1] if k > 1 else np.full(len(idx), np.inf)
        np.testing.assert_allclose(second.numpy(), expected, rtol=1e-4, atol=1e-4)
        labels1, best1, none = K.sqeuclidean_nearest(X, C, sqnorm, chunk, rows)
        assert none is None
        np.testing.assert_array_equal(labels1.numpy(), labels.numpy())
        np.testing.assert_array_equal(best1.numpy(), best.numpy())


@pytest.mark.parametrize("task_size", [None, 2000])  # default, or columns split in groups
@pytest.mark.parametrize("hint", ["none", "exact", "close", "near", "far"])
def test_exact_medians_whatever_the_previous_centers(hint, task_size, backend, monkeypatch):
    """The selection first tries a narrow window around the previous center
    (its retry, and the sampled bracket of clusters >= 256, when that misses);
    the median is exact whatever the hint (ties, skewed columns, even and odd
    sizes, small clusters, columns copied in one task or in groups)."""
    if task_size is not None:
        monkeypatch.setattr(K, "_MEDIAN_TASK", task_size)
    rng = np.random.default_rng(7)
    sizes = [5, 70, 256, 257, 1000, 3001]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    X = rng.normal(size=(labels.size, 40)).astype(np.float32)
    X[:, :10] = np.round(X[:, :10] * 2)  # many ties
    X[:, 10:20] = rng.exponential(size=(labels.size, 10))  # skewed: window widths differ
    expected = np.stack([np.median(X[labels == j], axis=0) for j in range(len(sizes))])
    prev = {
        "none": np.full_like(expected, np.nan),
        "exact": expected,
        "close": expected + 0.004,  # inside or just outside the first window
        "near": expected + 0.05,
        "far": expected + 100.0,
    }[hint]
    got = K.coord_centers(torch.from_numpy(X), torch.from_numpy(labels),
                          torch.from_numpy(prev.astype(np.float32)), K.ABS, 1.0)
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("d", [3, 32, 33, 100])  # both CPU kernels: samples or centers on the lanes
@pytest.mark.parametrize("kind", [K.ABS, K.HUBER, K.PSEUDO_HUBER])
def test_coordinatewise_assignment_matches_brute_force(kind, d):
    rng = np.random.default_rng(d + 10 * kind)
    X = torch.from_numpy(rng.normal(size=(301, d)).astype(np.float32))
    C = torch.from_numpy(rng.normal(size=(9, d)).astype(np.float32))
    D = K.rho_torch(X[:, None, :].double() - C[None].double(), kind, 0.7).sum(-1).numpy()
    order = np.sort(D, axis=1)
    for rows in (None, torch.tensor([0, 5, 130, 300])):
        idx = np.arange(301) if rows is None else rows.numpy()
        labels, best, second = K.coord_assign(X, C, kind, 0.7, rows)
        np.testing.assert_array_equal(labels.numpy(), D[idx].argmin(1))
        # pseudo-Huber ranks by a cheaper form on CPU: its best loss is recomputed by the engine
        tol = 1e-3 if kind == K.PSEUDO_HUBER else 1e-4
        np.testing.assert_allclose(best.numpy(), order[idx, 0], rtol=tol, atol=tol * d)
        np.testing.assert_allclose(second.numpy(), order[idx, 1], rtol=tol, atol=tol * d)


@pytest.mark.parametrize("loss", ["squared", "huber"])
def test_large_n_seeds_on_a_uniform_sample(loss, monkeypatch):
    """Above the seeding sample size, k-means++ draws its seeds from a uniform
    sample: seeds are rows of X, and the fit reaches the full seeding's
    objective within 2% and finds every blob."""
    from sklearn.metrics import adjusted_rand_score

    import clustering.engine.kmeans as km

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 12, 20_000)
    X = (rng.normal(size=(12, 8)) * 6)[truth] + rng.normal(size=(20_000, 8))
    X = X.astype(np.float32)

    def fit():
        param = None if loss == "squared" else 1.0
        return GeneralizedKMeans(12, loss=loss, loss_param=param, n_init=3, random_state=1,
                                 max_iter=30).fit(X)

    full = fit()
    drawn = []
    original = km._Engine._subset
    monkeypatch.setattr(km, "_SEED_SAMPLES", 2000)
    monkeypatch.setattr(km._Engine, "_subset", lambda self, rows: drawn.append(len(rows)) or original(self, rows))
    sampled = fit()
    assert 2000 in drawn
    assert sampled.objective_ <= full.objective_ * 1.02
    assert adjusted_rand_score(truth, sampled.labels_) > 0.99


def test_values_too_large_for_the_dtype_are_refused():
    X = blobs(n=60, d=4, k=3, seed=2).astype(np.float32)
    X[7, 1] = 1e20
    with pytest.raises(ValueError, match=r"X holds values up to 1e\+20 .* float32 distance arithmetic over 4 dimensions"):
        GeneralizedKMeans(3).fit(X)
    GeneralizedKMeans(3, dtype="float64", max_iter=5).fit(X)  # float64 has the range


def test_max_iter_zero_needs_an_init_array():
    X = blobs(n=60, d=4, k=3, seed=3)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        GeneralizedKMeans(3, max_iter=0).fit(X)
    km = GeneralizedKMeans(3, init=X[:3], max_iter=0).fit(X)  # assignment to the given centers only
    np.testing.assert_array_equal(km.cluster_centers_, X[:3].astype(np.float32))


def test_fewer_distinct_points_than_k_warn():
    from clustering.engine.kmeans import FewerClustersWarning

    X = np.repeat(np.eye(2), 20, axis=0)
    with pytest.warns(FewerClustersWarning, match="Only 2 of the n_clusters=3 clusters could be formed: X has 2 distinct points"):
        km = GeneralizedKMeans(3, n_init=2, random_state=0).fit(X)
    assert len(np.unique(km.labels_)) == 2
