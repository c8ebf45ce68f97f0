"""Curating a clustering run: name, merge and split clusters, assign new
samples, turn clusters into labels, tag a cluster's samples.

Every action keeps the run consistent, as if it had been computed that way:
its fields (``{run_key}_cluster``, ``_loss``, ``_rep`` and ``_name``), its
results (labels, per-sample losses, centers, sizes, representatives,
objective, names) and its config (``k``, ``num_clustered``) change together;
only the values that change are written (through :mod:`clustering.runs.storage`),
and nothing outside the run's own fields changes (but for :func:`to_labels`,
which writes the label field it is given, and :func:`tag_cluster`, which
tags samples). Bad input raises ``ValueError`` naming the problem before
anything is written.

Cluster ids are stable. ``results.centers`` and ``results.cluster_sizes`` are
indexed by cluster id; a cluster merged into another, or split, is retired:
its center row is NaN, its size 0, it is absent from
``results.cluster_ids()``, and its id is never given out again (a split's
clusters get new ids from ``len(results.centers)`` on).

A center recomputed here (merge, split) is the minimizer of its members'
summed loss under the run's loss (the scikit-learn methods' loss is the
squared distance, whose minimizer is the mean), found by the loss's own center
update from the best starting point at hand; every member's loss is then its
loss to that center. :func:`assign_new_samples` does not move centers (like
``predict``).

Every action is recorded in ``results.edits``: a list of
``{"id", "action", "params", "outcome", "timestamp"}`` (UTC, ISO 8601).

Each action runs under the run's claim on its latest stored state and stores
its changes as one recoverable step (:mod:`clustering.runs.writer`): another
process's edit is never lost, and an edit refused because another writer is
at work says so.
"""

import time

import numpy as np

from ..features import transform as cf
from . import records as cr
from . import writer
from .compute import patches_field_of
from .model import RunModel
from .tree import refuse_if_parent
from ..naming.names import HAND_WRITTEN, default_name_field
from ..engine.methods import get_method

# clusters listed by name in an error message
_MAX_LISTED = 30


def set_cluster_name(samples, run_key, cluster, name, description=None):
    """Gives cluster ``cluster`` of run ``run_key`` a hand-written name (and
    optional description), stored in ``results.names`` and the run's
    ``{run_key}_name`` field. Hand-written names are kept verbatim by
    :func:`clustering.label_clusters` unless it runs with ``overwrite=True``.

    Returns:
        the names of all clusters, ``{cluster id (str): name}``
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"description must be a string or None; got {description!r}")
    with _Edit(samples, run_key, "set_cluster_name", images_only=True) as edit:
        c = edit.cluster(cluster)
        name = " ".join(name.split())
        edit.raw_names[str(c)] = name
        edit.provenance[str(c)] = {"provider": HAND_WRITTEN, "time": _now()}
        if description and description.strip():
            edit.descriptions[str(c)] = " ".join(description.split())
        else:
            edit.descriptions.pop(str(c), None)
        edit.save({"cluster": c, "name": name, "description": description})
        return dict(edit.results.names)


def merge_clusters(samples, run_key, clusters):
    """Merges ``clusters`` (two or more ids) of run ``run_key`` into the
    smallest of them; the other ids are retired (see the module docstring),
    and the merged cluster keeps the smallest id's name.

    Returns:
        the merged cluster's id
    """
    with _Edit(samples, run_key, "merge_clusters") as edit:
        if isinstance(clusters, (str, bytes)) or not hasattr(clusters, "__iter__"):
            raise ValueError(f"clusters must be a list of cluster ids; got {clusters!r}")
        clusters = list(clusters)
        ids = sorted({edit.cluster(c) for c in clusters})
        if len(ids) < 2:
            raise ValueError(f"Merging needs at least two different clusters; got {clusters!r}")
        refuse_if_parent(edit.dataset, run_key, "merge clusters")
        parents = {edit.parents.get(str(c)) for c in ids}
        if len(parents) > 1:
            raise ValueError(
                f"Clusters {ids} of run '{run_key}' have different parents ({sorted(parents)}) in the "
                f"cluster tree; merge siblings only"
            )
        target = ids[0]
        members = np.flatnonzero(np.isin(edit.labels, ids))
        X = edit.features(members)
        model = edit.model
        # from the best of the old centers (a non-convex loss such as correntropy
        # has local minimizers)
        candidates = RunModel(model.loss.name, model.loss_param, edit.centers[ids], None)
        start = edit.centers[ids][np.argmin(candidates.losses(X).sum(axis=0))]
        centers, losses = model.minimizers(X, np.zeros(len(members), dtype=np.int64), start[None])
        edit.labels[members] = target
        edit.losses[members] = losses
        edit.centers[target] = centers[0]
        edit.stability.pop(str(target), None)  # a new group: not scored until the run is recomputed
        for c in ids[1:]:
            edit.retire(c)
        edit.touched.add(target)
        edit.save({"clusters": ids}, {"cluster": target, "size": len(members)})
        return target


def split_cluster(samples, run_key, cluster, k=2):
    """Re-clusters the members of ``cluster`` into ``k`` clusters with the
    run's method, loss (and its parameter) and features (the run's embeddings
    field, normalized / reduced as the run did). The new clusters get new ids
    (from ``len(results.centers)`` on); ``cluster`` is retired with its name.
    Runs on an embeddings array (no field) and HDBSCAN runs (which
    choose their own number of clusters) are refused.

    Returns:
        the new cluster ids
    """
    with _Edit(samples, run_key, "split_cluster") as edit:
        c = edit.cluster(cluster)
        method = get_method(edit.config.method)
        if not method.needs_k:
            raise ValueError(
                f"Run '{run_key}' uses {edit.config.method}, which chooses its own number of "
                "clusters; split_cluster needs a method with k"
            )
        members = np.flatnonzero(edit.labels == c)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"k must be an integer >= 2; got {k!r}")
        if k > len(members):
            raise ValueError(f"Cannot split cluster {c} into k={k} clusters: it has {len(members)} members")
        refuse_if_parent(edit.dataset, run_key, "split clusters")
        X = edit.features(members)
        local, centers, losses = edit.model.refit(X, k)
        if len(centers) < 2:
            raise ValueError(f"Cluster {c} cannot be split: {edit.config.method} found a single cluster in it")
        new = edit.new_clusters(centers)
        parent = edit.parents.get(str(c))
        edit.retire(c)
        for n in new if parent is not None else ():
            edit.parents[str(n)] = parent  # siblings of the split cluster in a cluster tree
        edit.labels[members] = np.asarray(new)[local]
        edit.losses[members] = losses
        edit.touched.update(new)
        edit.save({"cluster": c, "k": int(k)}, {"clusters": new, "sizes": np.bincount(local).tolist()})
        return new


def assign_new_samples(samples, run_key):
    """Gives each sample of ``samples`` that has the run's features but is not
    in the run (for example added after it) the cluster of the nearest center
    under the run's loss, after the run's normalization / PCA. Labels of the
    run's samples never change and centers do not move. Runs on an embeddings
    array and HDBSCAN runs (density-based, with noise) are refused.
    For a run on patches, ``samples`` is a patches view of the same field. In
    a level of a cluster tree, a sample goes to the nearest sub-cluster of its
    cluster one level up (samples of clusters not sub-clustered stay out).

    Returns:
        how many samples were assigned
    """
    with _Edit(samples, run_key, "assign_new_samples") as edit:
        config = edit.config
        if config.method == "hdbscan":
            raise ValueError(
                f"Run '{run_key}' uses HDBSCAN, whose clusters are density-based (with noise) "
                "rather than nearest-center; recompute the run to include new samples"
            )
        if patches_field_of(samples) != config.patches_field:
            what = f"a patches view of '{config.patches_field}'" if config.patches_field else "images, not patches"
            raise ValueError(f"Run '{run_key}' clusters {what}; pass such a collection")
        model = edit.model
        field = model._field("assign_new_samples")
        cf.validate_embeddings_field(samples, field)
        known = set(edit.ids)
        new_ids = [i for i in samples.exists(field).values("id") if i not in known]
        if not new_ids:
            return 0
        if edit.parents:
            new_ids, X, nearest, losses = _assign_below_parents(edit, samples, new_ids)
        else:
            _, X = model.features(samples.select(new_ids), new_ids, "assign_new_samples")
            nearest, losses = model.assign(X)
        if not new_ids:
            return 0
        edit.append(new_ids, nearest, losses)
        edit.touched.update(int(c) for c in np.unique(nearest))
        edit.save({}, {"assigned": len(new_ids)})
        return len(new_ids)


def _assign_below_parents(edit, samples, new_ids):
    """``(ids, X, labels, losses)`` of the new samples of a tree level whose
    cluster one level up has sub-clusters: each to the nearest of them."""
    parent = writer.latest_results(edit.dataset, edit.config.parent_run)
    parent_of = dict(zip(parent.sample_ids, np.asarray(parent.labels).tolist()))
    children = {}
    for c, p in edit.parents.items():
        if np.isfinite(edit.centers[int(c)]).all():
            children.setdefault(p, []).append(int(c))
    new_ids = [i for i in new_ids if parent_of.get(i) in children]
    if not new_ids:
        return [], None, None, None
    _, X = edit.model.features(samples.select(new_ids), new_ids, "assign_new_samples")
    labels, losses = np.zeros(len(new_ids), dtype=np.int64), np.zeros(len(new_ids))
    groups = np.array([parent_of[i] for i in new_ids])
    for p, kids in children.items():
        rows = np.flatnonzero(groups == p)
        if len(rows):
            local, losses[rows] = RunModel(edit.model.loss.name, edit.model.loss_param, edit.centers[kids], None).assign(X[rows])
            labels[rows] = np.asarray(kids)[local]
    return new_ids, X, labels, losses


def to_labels(samples, run_key, label_field, use_names=True, overwrite=False):
    """Writes a ``fo.Classification`` in ``label_field`` for each sample of
    ``samples`` in a cluster of run ``run_key``: label = the cluster's name
    (``use_names``) or ``cluster_<id>``; confidence = the share of the
    cluster's members whose loss is at least the sample's (1 for the member
    nearest its center, 1/size for the farthest). HDBSCAN noise gets no label.
    ``label_field`` is the user's, not the run's: deleting the run keeps it.
    An existing field is refused unless ``overwrite`` (then it must be a
    Classification field; only the run's samples in ``samples`` are written).

    Returns:
        how many labels were written
    """
    import fiftyone as fo

    with _Edit(samples, run_key, "to_labels", images_only=True) as edit:
        dataset = edit.dataset
        if not isinstance(label_field, str) or not label_field.isidentifier():
            raise ValueError(f"Invalid label_field {label_field!r}: use a Python identifier")
        run_fields = {*cr.default_fields(run_key).values(), default_name_field(run_key)}
        run_fields |= {getattr(edit.config, k, None) for k in cr.FIELD_KEYS}
        if label_field in run_fields:
            raise ValueError(f"Field '{label_field}' is a field of run '{run_key}'; choose another label_field")
        if dataset.has_field(label_field):
            if not overwrite:
                raise ValueError(
                    f"Field '{label_field}' already exists; pass overwrite=True to replace its "
                    "labels on the run's samples, or choose another label_field"
                )
            ftype = dataset.get_field(label_field)
            if not (isinstance(ftype, fo.EmbeddedDocumentField) and issubclass(ftype.document_type, fo.Classification)):
                raise ValueError(
                    f"Field '{label_field}' has type {type(ftype).__name__}, not Classification; "
                    "choose another label_field"
                )
        params = {
            "label_field": label_field, "use_names": bool(use_names), "overwrite": bool(overwrite),
            "view": writer.view_stages(samples),
        }
        present = set(samples.values("id"))
        count = sum(1 for i, c in zip(edit.ids, edit.labels.tolist()) if c >= 0 and i in present)
        return edit.save(params, {"labels": count}, side_write=writer.apply_labels)


def tag_cluster(samples, run_key, cluster, tags):
    """Adds the sample tag(s) ``tags`` to the members of ``cluster`` that are in
    ``samples``; returns how many samples that is."""
    return _edit_tags(samples, run_key, cluster, tags, "tag_cluster")


def untag_cluster(samples, run_key, cluster, tags):
    """Removes the sample tag(s) ``tags`` from the members of ``cluster`` that
    are in ``samples``; returns how many samples that is."""
    return _edit_tags(samples, run_key, cluster, tags, "untag_cluster")


def _edit_tags(samples, run_key, cluster, tags, action):
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    if not tags or not all(isinstance(t, str) and t.strip() for t in tags):
        raise ValueError(f"tags must be a non-empty string or list of non-empty strings; got {tags!r}")
    with _Edit(samples, run_key, action, images_only=True) as edit:
        c = edit.cluster(cluster)
        params = {"cluster": c, "tags": tags, "add": action == "tag_cluster", "view": writer.view_stages(samples)}
        count = len(writer.members_in(edit.results, samples, c))
        return edit.save(params, {"samples": count}, side_write=writer.apply_tags)


# ---------------------------------------------------------------------------
# helpers


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Edit(writer.RunEdit):
    """A claimed run state (:class:`clustering.runs.writer.RunEdit`) with what
    curation reads: cluster ids checked, the run's loss, and its features."""

    def cluster(self, value):
        """``value`` checked to be a cluster of the run."""
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"A cluster id must be an integer; got {value!r}")
        ids = self.cluster_ids()
        if int(value) not in ids:
            listed = ", ".join(map(str, ids[:_MAX_LISTED])) + (", ..." if len(ids) > _MAX_LISTED else "")
            what = "is HDBSCAN noise, not a cluster" if value == -1 else "does not exist"
            raise ValueError(f"Cluster {value} of run '{self.run_key}' {what}; its clusters are {listed}")
        return int(value)

    def _load(self):
        super()._load()
        self.model = RunModel.of(self.results)  # the run's features and loss, as loaded

    def features(self, rows):
        """The run's features of its samples at positions ``rows``."""
        return self.model.run_features(self.dataset, [self.ids[i] for i in rows], self.action)
