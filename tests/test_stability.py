"""Per-cluster stability (clustering.engine.stability): no FiftyOne, no MongoDB."""

import numpy as np
import pytest
import torch

from clustering import GeneralizedKMeans
from clustering.engine.stability import cluster_stability, jaccard_matches, kmeans_stability


def blobs_and_noise(seed, per_blob=400, noise=300, separation=10.0):
    """4 Gaussian blobs at the corners of a square (2-d, unit noise) and
    ``noise`` points uniform over their bounding box (label 4)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]]) * separation
    X = np.concatenate([c + rng.normal(size=(per_blob, 2)) for c in centers])
    uniform = rng.uniform(X.min(0), X.max(0), size=(noise, 2))
    y = np.r_[np.repeat(np.arange(4), per_blob), np.full(noise, 4)]
    return np.concatenate([X, uniform]).astype(np.float32), y


def brute_force_jaccard(labels, refit):
    out = []
    for i in range(labels.max() + 1):
        a = labels == i
        if not a.any():
            out.append(np.nan)
            continue
        out.append(max((a & (refit == j)).sum() / (a | (refit == j)).sum()
                       for j in np.unique(refit[refit >= 0])))
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_jaccard_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(-1, 6, 300)
    labels[labels == 3] = 5  # cluster 3 has no point: NaN
    refit = rng.integers(-1, 4, 300)
    np.testing.assert_allclose(jaccard_matches(labels, refit), brute_force_jaccard(labels, refit))
    assert jaccard_matches(labels, refit, k=8).shape == (8,)


@pytest.mark.parametrize("seed", range(3))
def test_uniform_noise_cluster_scores_lowest(seed):
    X, y = blobs_and_noise(seed)
    km = GeneralizedKMeans(5, n_init=10, random_state=seed).fit(X)
    result = kmeans_stability(km, X, random_state=seed)
    # the cluster that is not a blob: the one whose members are mostly noise
    noise_share = np.bincount(km.labels_, weights=y == 4, minlength=5) / np.bincount(km.labels_)
    noise_cluster = int(np.argmax(noise_share))
    assert noise_share[noise_cluster] > 0.5
    blobs = np.delete(result.scores, noise_cluster)
    assert np.all(blobs > 0.9), result.scores
    assert result.scores[noise_cluster] < blobs.min() - 0.05, result.scores
    assert result.jaccard.shape == (20, 5) and result.sample_size == 950
    sizes = np.bincount(km.labels_)
    assert result.score == pytest.approx(np.average(result.scores, weights=sizes))


def test_scores_follow_the_refits_not_their_label_names():
    """Refits that find the true clusters under other label numbers score 1 (the
    matching is by best Jaccard, not by label); refits with random labels score
    about as a random split does."""
    X, y = blobs_and_noise(0, noise=0)
    rng = np.random.default_rng(0)
    permuted = cluster_stability(X, y, lambda Xs: 3 - _truth(Xs), random_state=0)
    np.testing.assert_allclose(permuted.scores, 1.0)
    assert permuted.score == 1.0
    random = cluster_stability(X, y, lambda Xs: rng.integers(0, 4, len(Xs)), random_state=0)
    assert np.all(random.scores < 0.3), random.scores


def _truth(X):
    """The corner blob of each point of ``blobs_and_noise(..., noise=0)``."""
    return 2 * (X[:, 0] > 0) + (X[:, 1] > 0)


def test_subsample_size_cost_bound_noise_labels_and_reproducibility():
    X, y = blobs_and_noise(1, noise=0)
    sizes = []

    def fit(Xs):
        sizes.append(len(Xs))
        return _truth(Xs)

    labels = y.copy()
    labels[:40] = -1  # noise points of the run belong to no cluster (those refitted into 0)
    result = cluster_stability(X, labels, fit, n_resamples=3, sample_fraction=0.5,
                               max_samples=300, random_state=0)
    assert sizes == [300, 300, 300] and result.sample_size == 300
    np.testing.assert_allclose(result.scores[1:], 1.0)
    assert 0.8 < result.scores[0] < 0.95
    a = kmeans_stability(GeneralizedKMeans(4, random_state=0).fit(X), X, n_resamples=4,
                         random_state=3)
    b = kmeans_stability(GeneralizedKMeans(4, random_state=0).fit(X), torch.from_numpy(X),
                         n_resamples=4, random_state=3)
    np.testing.assert_array_equal(a.jaccard, b.jaccard)


def test_refits_reuse_the_fitted_loss_parameter_and_start_from_scratch(monkeypatch):
    X, _ = blobs_and_noise(2)
    km = GeneralizedKMeans(5, loss="huber", init=X[:5], random_state=0).fit(X)
    seen = []
    original = GeneralizedKMeans.fit
    monkeypatch.setattr(GeneralizedKMeans, "fit",
                        lambda self, X, progress=None: seen.append(self.get_params())
                        or original(self, X, progress))
    kmeans_stability(km, X, n_resamples=2, random_state=0)
    assert len(seen) == 2
    for params in seen:
        assert params["loss_param"] == km.loss_param_ and params["init"] == "k-means++"
        assert params["n_init"] == 1 and params["loss"] == "huber"  # the estimator's (init array)
    assert seen[0]["random_state"] != seen[1]["random_state"]
    seen.clear()
    kmeans_stability(km.set_params(n_init=10), X, n_resamples=1, random_state=0)
    assert seen[0]["n_init"] == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"n_resamples": 0}, "n_resamples"),
    ({"sample_fraction": 1.0}, "sample_fraction"),
    ({"max_samples": 1}, "too small"),
])
def test_invalid_arguments(kwargs, match):
    X, y = blobs_and_noise(0, noise=0)
    with pytest.raises(ValueError, match=match):
        cluster_stability(X, y, _truth, **kwargs)
    with pytest.raises(ValueError, match="rows"):
        cluster_stability(X[:-1], y, _truth)
    with pytest.raises(ValueError, match="not fitted"):
        kmeans_stability(GeneralizedKMeans(4), X)
