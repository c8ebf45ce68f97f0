"""Cluster identity across runs: which cluster of one run is which of another.

Two labelings of (partly) the same samples are matched by their members: the
clusters' Jaccard similarity on the samples both labelled, and the one-to-one
matching that maximizes its sum (the Hungarian algorithm); a pair below
``min_jaccard`` is no match. A cluster of the first labeling left unmatched
has *vanished*, one of the second is *new*.

``compute_clusters(..., overwrite=True)`` uses it to keep a re-run's clusters
the clusters they were (:func:`carry_over`): a matched cluster keeps its id,
name, description and naming provenance, its curation history stays in
``edits``; new clusters get ids never used by the run.
"""

import time

import numpy as np

#: matched clusters share at least this Jaccard similarity of their members
MIN_JACCARD = 0.3


def match_clusters(ids_a, labels_a, ids_b, labels_b, min_jaccard=MIN_JACCARD):
    """Matches the clusters of labeling A (sample ids ``ids_a``, cluster
    ``labels_a``, -1 = noise) to those of labeling B.

    Returns:
        a dict: ``matches`` (``[{"a", "b", "jaccard", "shared", "size_a",
        "size_b"}]``, by ``a``), ``vanished`` (clusters of A without a match),
        ``new`` (of B), ``moved`` (the ids of the samples in both labelings
        whose cluster is not the match of their cluster in A) and ``compared``
        (samples in both)
    """
    from scipy.optimize import linear_sum_assignment

    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    clusters_a = np.unique(labels_a[labels_a >= 0])
    clusters_b = np.unique(labels_b[labels_b >= 0])
    row_b = {i: n for n, i in enumerate(ids_b)}
    both = [(n, row_b[i]) for n, i in enumerate(ids_a) if i in row_b]
    pa = np.array([p for p, _ in both], dtype=np.int64)
    pb = np.array([q for _, q in both], dtype=np.int64)
    la, lb = labels_a[pa] if both else np.zeros(0, int), labels_b[pb] if both else np.zeros(0, int)
    index_a = {c: j for j, c in enumerate(clusters_a)}
    index_b = {c: j for j, c in enumerate(clusters_b)}
    shared = np.zeros((len(clusters_a), len(clusters_b)), dtype=np.int64)
    keep = (la >= 0) & (lb >= 0)
    np.add.at(shared, ([index_a[c] for c in la[keep]], [index_b[c] for c in lb[keep]]), 1)
    size_a = np.array([(la == c).sum() for c in clusters_a], dtype=np.int64)
    size_b = np.array([(lb == c).sum() for c in clusters_b], dtype=np.int64)
    union = size_a[:, None] + size_b[None, :] - shared
    jaccard = np.divide(shared, union, out=np.zeros(shared.shape), where=union > 0)
    rows, cols = linear_sum_assignment(-jaccard) if jaccard.size else ([], [])
    matches = [
        {
            "a": int(clusters_a[r]), "b": int(clusters_b[c]), "jaccard": float(jaccard[r, c]),
            "shared": int(shared[r, c]), "size_a": int(size_a[r]), "size_b": int(size_b[c]),
        }
        for r, c in zip(rows, cols)
        if jaccard[r, c] >= min_jaccard
    ]
    matched_a = {m["a"]: m["b"] for m in matches}
    moved = [
        ids_a[p] for p, x, y in zip(pa, la, lb)
        if x >= 0 and y >= 0 and matched_a.get(int(x)) != int(y)
    ]
    return {
        "matches": sorted(matches, key=lambda m: m["a"]),
        "vanished": [int(c) for c in clusters_a if int(c) not in matched_a],
        "new": [int(c) for c in clusters_b if int(c) not in {m["b"] for m in matches}],
        "moved": moved,
        "compared": len(both),
    }


def carry_over(old, ids, labels, min_jaccard=MIN_JACCARD):
    """The identity of a re-run's clusters from the run it replaces.

    Args:
        old: the replaced run's :class:`clustering.runs.ClusteringResults`
        ids, labels: the new fit's sample ids and labels (0..k-1, -1 = noise)

    Returns:
        ``(ids_of, carried)``: ``ids_of`` maps each new label to its id (a
        matched cluster's old id, else an id the old run never used), and
        ``carried`` holds what the new results inherit: ``names``,
        ``descriptions``, ``naming``, ``edits`` (the old ones, then a
        ``recompute`` record with the matching)
    """
    matching = match_clusters(list(old.sample_ids), old.labels, list(ids), labels, min_jaccard)
    ids_of = {m["b"]: m["a"] for m in matching["matches"]}
    next_id = len(old.centers)  # retired ids are never given out again
    for c in matching["new"]:
        ids_of[c], next_id = next_id, next_id + 1
    kept = {str(m["a"]) for m in matching["matches"]}
    naming = dict(getattr(old, "naming", None) or {})
    for key in ("raw_names", "clusters", "errors"):
        naming[key] = {c: v for c, v in (naming.get(key) or {}).items() if c in kept}
    record = {
        "action": "recompute",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": {},
        "outcome": {
            "matched": [[m["a"], m["jaccard"]] for m in matching["matches"]],
            "new": [ids_of[c] for c in matching["new"]],
            "vanished": matching["vanished"],
            "moved": len(matching["moved"]),
        },
    }
    carried = {
        "names": {c: n for c, n in (getattr(old, "names", None) or {}).items() if c in kept},
        "descriptions": {c: d for c, d in (getattr(old, "descriptions", None) or {}).items() if c in kept},
        "naming": naming,
        "edits": list(getattr(old, "edits", None) or []) + [record],
    }
    return ids_of, carried
