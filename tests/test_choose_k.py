"""choose_k on arrays (no collection, no database) and its recommendation rule
(:func:`clustering.recommend_k`), on labelled synthetic clusters."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import clustering
from clustering.datasets import contaminated_blobs, separated_blobs
from conftest import REPO_ROOT

KS = list(range(2, 9))


def metrics_with_picks(elbow=None, silhouette=None, davies_bouldin=None, calinski_harabasz=None,
                       stability=None, gap=None):
    """Per-k metric curves over KS whose best k per criterion are the given ones
    (None: not computed)."""
    def peak(k, high=True):
        if k is None:
            return [None] * len(KS)
        return [(1.0 if kk == k else 0.5) * (1 if high else -1) + 2 for kk in KS]

    objective = [100.0 / kk for kk in KS]
    if elbow is not None:  # a sharp bend at ``elbow``
        objective = [100.0 - 90.0 * min(kk - KS[0], elbow - KS[0]) / (elbow - KS[0]) - kk * 0.1
                     for kk in KS]
    gap_values = [None] * len(KS) if gap is None else [min(kk, gap) * 1.0 for kk in KS]
    return {
        "k": KS,
        "objective": objective,
        "silhouette": peak(silhouette),
        "davies_bouldin": peak(davies_bouldin, high=False),
        "calinski_harabasz": peak(calinski_harabasz),
        "stability": peak(stability),
        "gap": gap_values,
        "gap_se": [None if g is None else 0.01 for g in gap_values],
    }


def test_recommend_k_takes_the_gap_where_another_criterion_allows_it():
    m = metrics_with_picks(elbow=5, silhouette=3, davies_bouldin=3, calinski_harabasz=3,
                           stability=3, gap=5)
    k, reason, best = clustering.recommend_k(KS, m)
    assert best == {"elbow": 5, "silhouette": 3, "davies_bouldin": 3, "calinski_harabasz": 3,
                    "stability": 3, "gap": 5}
    assert k == 5 and "gap statistic picks k=5" in reason and "(elbow, gap)" in reason

    # the gap one above every other criterion (which err low): still the gap's k
    m = metrics_with_picks(elbow=4, silhouette=3, davies_bouldin=3, calinski_harabasz=3,
                           stability=2, gap=5)
    assert clustering.recommend_k(KS, m)[0] == 5
    # more than one above: the largest of theirs
    m = metrics_with_picks(elbow=4, silhouette=3, davies_bouldin=3, calinski_harabasz=3,
                           stability=2, gap=7)
    k, reason, _ = clustering.recommend_k(KS, m)
    assert k == 4 and "exceeds every other criterion's by more than 1" in reason

    # no gap statistic: the k most criteria pick
    m = metrics_with_picks(elbow=4, silhouette=6, davies_bouldin=6, calinski_harabasz=4)
    assert clustering.recommend_k(KS, m)[0] == 6


@pytest.mark.parametrize("sizes", [[300, 300, 300, 300], [400, 300, 200, 150, 100, 80, 60, 40]],
                         ids=["k=4", "k=8 unequal sizes"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recommendation_is_exact_on_separated_blobs(sizes, seed):
    X, _ = separated_blobs(sizes, d=4, std=1.0, min_separation=9.0, random_state=seed)
    r = clustering.choose_k(None, embeddings=X, k_min=2, k_max=12, progress=False)
    assert r["recommended_k"] == len(sizes), r["reason"]
    assert "gap" in r["agree"] and r["num_samples"] == len(X)


def test_a_robust_loss_recommends_k_under_contamination():
    X, _, _, _ = contaminated_blobs(n=1000, k=5, contamination="far", fraction=0.1, random_state=3)
    r = clustering.choose_k(None, embeddings=X, loss="correntropy", k_min=2, k_max=8, n_init=1,
                            progress=False)
    assert r["recommended_k"] == 5, r["reason"]
    assert r["loss"] == "correntropy" and r["loss_param"] > 0


def test_choose_k_on_an_array_needs_no_database():
    """Imports neither FiftyOne nor a database client, with the database unreachable."""
    code = (
        "import json, sys, numpy as np, clustering\n"
        "from clustering.datasets import separated_blobs\n"
        "X, _ = separated_blobs([100, 100, 100], random_state=0)\n"
        "r = clustering.choose_k(None, embeddings=X, k_min=2, k_max=5, progress=False)\n"
        "print(json.dumps({'k': r['recommended_k'], 'fiftyone': 'fiftyone' in sys.modules}))\n"
    )
    env = dict(os.environ, FIFTYONE_DATABASE_URI="mongodb://127.0.0.1:9", PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"k": 3, "fiftyone": False}


def test_choose_k_without_a_collection_validates():
    with pytest.raises(ValueError, match=r"samples=None\), embeddings must be an \(n, d\) array"):
        clustering.choose_k(None, embeddings="pixels")
    with pytest.raises(ValueError, match="must be 2-D"):
        clustering.choose_k(None, embeddings=np.zeros(10))
    with pytest.raises(ValueError, match="at most n - 1"):
        clustering.choose_k(None, embeddings=np.random.default_rng(0).normal(size=(6, 2)),
                            k_min=2, k_max=6)
