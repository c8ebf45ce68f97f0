"""The pure clustering metrics (clustering.engine.metrics) against scikit-learn and
hand-computed references. No FiftyOne."""

import itertools

import numpy as np
import pytest
from sklearn import metrics as skm

from clustering.engine import metrics as cm


def blobs(n_per, centers, dim=8, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0, scale, (n_per, dim)) + c for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per)
    return X, y


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    X, y = blobs(60, [np.full(8, v) for v in (0.0, 2.0, 4.0, 7.0)], scale=1.2)
    y = y.copy()
    y[rng.choice(len(y), 15, replace=False)] = 4  # a scattered fifth cluster
    y[7] = 9  # a singleton cluster: silhouette 0 by convention
    return X, y


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_silhouette_equals_sklearn_on_the_full_set(data, metric):
    X, y = data
    ours = cm.silhouette_samples(X, y, metric=metric, chunk_size=17)  # many chunks
    ref = skm.silhouette_samples(X, y, metric=metric)
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    assert ours[7] == 0.0
    assert cm.silhouette_score(X, y, metric=metric) == pytest.approx(skm.silhouette_score(X, y, metric=metric), abs=1e-10)


def test_silhouette_of_a_sample_is_against_all_points(data):
    X, y = data
    idx = cm.sample_indices(len(X), 40, random_state=3)
    assert len(idx) == 40 and len(set(idx)) == 40
    ref = skm.silhouette_samples(X, y)
    np.testing.assert_allclose(cm.silhouette_samples(X, y, idx), ref[idx], atol=1e-9)
    assert cm.silhouette_score(X, y, sample_size=40, random_state=3) == pytest.approx(ref[idx].mean(), abs=1e-12)
    # labels given as strings work the same
    ys = np.array([f"c{v}" for v in y])
    np.testing.assert_allclose(cm.silhouette_samples(X, ys, idx), ref[idx], atol=1e-9)


def test_sampled_silhouette_is_unbiased_where_sklearn_sampling_is_not():
    # 100 tight, well separated clusters of 20 points: true silhouette ~0.9.
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 50, (100, 6))
    X, y = blobs(20, centers, dim=6, scale=0.5)
    true = skm.silhouette_score(X, y)
    assert true > 0.8
    ours = cm.silhouette_score(X, y, sample_size=100, random_state=0)
    # sklearn's sample_size subsamples the reference set too: most sampled
    # points are alone in their cluster and count 0
    theirs = skm.silhouette_score(X, y, sample_size=100, random_state=0)
    assert abs(ours - true) < 0.05
    assert theirs < true - 0.3


def test_silhouette_rejects_degenerate_labelings(data):
    X, y = data
    with pytest.raises(ValueError, match="2 <= number of clusters"):
        cm.silhouette_samples(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="labels for"):
        cm.silhouette_samples(X, y[:-1])
    with pytest.raises(ValueError, match="Unknown metric"):
        cm.silhouette_samples(X, y, metric="manhattan")


def test_stratified_sample_covers_every_cluster():
    y = np.repeat([0, 1, 2], [1000, 30, 5])
    idx = cm.stratified_indices(y, 100, min_per_cluster=10, random_state=0)
    counts = np.bincount(y[idx], minlength=3)
    assert counts.tolist() == [97, 10, 5]  # proportional, but small clusters kept
    assert len(set(idx)) == len(idx)
    assert cm.stratified_indices(y, None).tolist() == list(range(len(y)))


def test_per_cluster_silhouette_summaries():
    rows = cm.per_cluster_silhouette([0.5, -0.1, 0.3, 0.9], [1, 1, 2, 2])
    assert rows == [
        {"cluster": 1, "count": 2, "mean": pytest.approx(0.2), "min": -0.1, "max": 0.5, "num_negative": 1},
        {"cluster": 2, "count": 2, "mean": pytest.approx(0.6), "min": 0.3, "max": 0.9, "num_negative": 0},
    ]


def test_davies_bouldin_and_calinski_harabasz_match_sklearn(data):
    X, y = data
    assert cm.davies_bouldin(X, y) == pytest.approx(skm.davies_bouldin_score(X, y))
    assert cm.calinski_harabasz(X, y) == pytest.approx(skm.calinski_harabasz_score(X, y))


# ---------------------------------------------------------------------------
# knee


def test_knee_of_a_sharp_elbow():
    ks = np.arange(1, 11)
    y = np.where(ks <= 4, 100 - 25 * (ks - 1), 25 - 2 * (ks - 4))  # bends at k=4
    i, strength = cm.find_knee(ks, y)
    assert ks[i] == 4 and strength > 0.4
    # invariant to affine rescaling of the objective
    assert cm.find_knee(ks, 1000 * y + 7)[0] == i


def test_knee_of_smooth_curves():
    ks = np.arange(1, 16)
    # 1/k: knee at the point of maximum gap below the chord, by brute force
    y = 1.0 / ks
    xn, yn = (ks - 1) / 14, (y - y.min()) / (y.max() - y.min())
    expected = int(np.argmax((1 - xn) - yn))
    assert cm.find_knee(ks, y)[0] == expected and ks[expected] in (3, 4)
    # increasing, concave (saturating) curve
    i, _ = cm.find_knee(ks, 1 - np.exp(-ks / 2.0), direction="increasing", curve="concave")
    assert ks[i] in (3, 4, 5)


def test_no_knee_on_a_straight_line_or_short_curve():
    ks = np.arange(2, 12)
    assert cm.find_knee(ks, 50 - 3.0 * ks) == (None, pytest.approx(0.0, abs=1e-9))
    assert cm.find_knee([2, 3], [5, 1])[0] is None
    # a concave decreasing curve bends the other way: no elbow
    assert cm.find_knee(ks, -(ks**2.0))[0] is None
    # a tiny bend is rejected by min_strength
    y = 50 - 3.0 * ks
    y[4] -= 0.5
    assert cm.find_knee(ks, y)[0] == 4
    assert cm.find_knee(ks, y, min_strength=0.05)[0] is None


# ---------------------------------------------------------------------------
# labelings


Y_TRUE = np.array(["cat"] * 4 + ["dog"] * 3 + ["owl"] * 3)
Y_PRED = np.array([2, 2, 2, 0, 0, 0, 0, 1, 1, 1])  # one cat in the dog cluster


def test_contingency_table():
    rows, cols, counts = cm.contingency(Y_PRED, Y_TRUE)
    assert rows == [0, 1, 2] and cols == ["cat", "dog", "owl"]
    assert counts.tolist() == [[1, 3, 0], [0, 0, 3], [3, 0, 0]]
    assert all(type(v) is int for v in rows)


def test_hungarian_matching_and_accuracy():
    assert cm.match_labels(Y_PRED, Y_TRUE) == {0: "dog", 1: "owl", 2: "cat"}
    assert cm.matched_accuracy(Y_TRUE, Y_PRED) == pytest.approx(9 / 10)

    # brute force over all assignments on a random case with k == classes
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    best = max(sum(np.sum((p == a) & (t == perm[a])) for a in range(4)) for perm in itertools.permutations(range(4)))
    assert cm.matched_accuracy(t, p) == pytest.approx(best / 200)


def test_accuracy_counts_unmatched_clusters_as_errors():
    # 4 clusters, 2 classes: two clusters cannot be matched
    y_true = np.array(["a"] * 6 + ["b"] * 6)
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert cm.matched_accuracy(y_true, y_pred) == pytest.approx(0.5)
    overall, rows = cm.purity(y_true, y_pred)
    assert overall == 1.0 and all(r["purity"] == 1.0 for r in rows)


def test_purity_per_cluster():
    overall, rows = cm.purity(Y_TRUE, Y_PRED)
    assert overall == pytest.approx(9 / 10)
    assert rows[0] == {"cluster": 0, "size": 4, "majority_class": "dog", "majority_count": 3, "purity": 0.75}
    assert [r["majority_class"] for r in rows] == ["dog", "owl", "cat"]


def test_label_agreement_finds_changed_points():
    a = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    b = np.array([5, 5, 5, 3, 3, 7, 7, 7, 7])  # relabeled; point 5 moved from 1's group
    mapping, changed = cm.label_agreement(a, b)
    assert mapping == {0: 5, 1: 3, 2: 7}
    assert np.flatnonzero(changed).tolist() == [5]
    # a cluster of a that cannot be matched: all its points changed
    mapping, changed = cm.label_agreement(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 1, 1]))
    assert len(mapping) == 2 and changed.sum() == 2


def test_nmi_ari_are_sklearn_and_permutation_invariant():
    assert cm.nmi(Y_TRUE, Y_PRED) == pytest.approx(skm.normalized_mutual_info_score(Y_TRUE, Y_PRED))
    assert cm.ari(Y_TRUE, Y_PRED) == pytest.approx(skm.adjusted_rand_score(Y_TRUE, Y_PRED))
    perm = np.array([3, 9, 4])[np.array([0, 1, 2])[Y_PRED]]
    assert cm.ari(Y_PRED, perm) == pytest.approx(1.0) and cm.nmi(Y_PRED, perm) == pytest.approx(1.0)
