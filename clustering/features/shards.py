"""Disjoint shards of a collection, by sample id, for delegated operations
that several workers (on several machines) execute side by side.

A shard is a JSON-friendly spec ``{"index": i, "count": n, "from_id": a,
"to_id": b}``: the samples with ``a <= _id < b`` (no lower bound for the first
shard, no upper bound for the last), so the shards of a collection cover each
of its samples exactly once, those added later included. The bounds split the
collection's ids into shards of equal size.
"""

import numpy as np

from ..runs import storage


def shard_specs(samples, num_shards):
    """``num_shards`` specs (at most one per sample) splitting ``samples``."""
    if isinstance(num_shards, bool) or int(num_shards) != num_shards or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1; got {num_shards!r}")
    ids, _ = storage.read_ids(samples)
    count = max(1, min(int(num_shards), len(ids)))
    ordered = storage.id_strings(ids[np.argsort(storage.id_keys(ids), kind="stable")])
    bounds = [None] + [ordered[i * len(ordered) // count] for i in range(1, count)] + [None]
    return [
        {"index": i, "count": count, "from_id": bounds[i], "to_id": bounds[i + 1]}
        for i in range(count)
    ]


def shard_view(samples, spec):
    """The samples of ``samples`` in shard ``spec``."""
    from bson import ObjectId
    from fiftyone import ViewField as F

    view = samples
    if spec.get("from_id"):
        view = view.match(F("_id") >= ObjectId(spec["from_id"]))
    if spec.get("to_id"):
        view = view.match(F("_id") < ObjectId(spec["to_id"]))
    return view


def describe(spec):
    """``"shard 2/4"`` (1-based)."""
    return f"shard {spec['index'] + 1}/{spec['count']}"
