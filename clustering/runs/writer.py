"""The one writer of a clustering run.

Every change to a run (compute, overwrite, rename, delete, each curation
action, naming, ``to_labels``) goes through here:

- **A claim on the run key.** One document per (dataset, run key) in the
  ``imgclust_run_claims`` collection of FiftyOne's database, taken by one
  atomic update, so that a second writer fails at once with
  :class:`RunBusyError` ("Run 'x' is being written by merge_clusters (pid 123
  on host h, since ...)") or waits for it. The owner renews the claim from a
  thread; a claim whose owner died is taken over at once when its process is
  gone from this machine, else when it expires (:data:`CLAIM_TTL_S` after the
  last renewal, by the database's clock).
- **The latest stored state.** Under the claim the dataset's run documents
  are reloaded and the results are read from the database, never from a
  per-process cache (:func:`latest_results` serves readers the same way,
  reusing their cached copy only while the stored one is unchanged).
- **A journal.** Before its first write an action records on the claim what
  it does (action, parameters, an edit id). A curation action then saves the
  run's results, then writes its fields; ``compute_clusters`` registers the
  run with status ``"writing"``, writes its fields, then saves its results;
  each clears the journal last. A process killed in between leaves the
  journal behind: :func:`check_run` reports the run as interrupted, writers
  refuse to edit it, and ``check_run(..., repair=True)`` finishes the step
  in one call (fields rebuilt from the stored results, a ``to_labels`` or
  tagging step re-applied, a computation without results deleted, a rename
  or deletion completed).
"""

import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime

import numpy as np

from . import records as cr
from . import storage
from ..naming.names import HAND_WRITTEN, make_unique, name_field_of

logger = logging.getLogger(__name__)

CLAIMS_COLLECTION = "imgclust_run_claims"
#: seconds a claim outlives its owner's last renewal
CLAIM_TTL_S = 30.0
#: seconds an edit waits for another writer of the same run before failing
EDIT_WAIT_S = 30.0
_POLL_S = 0.2


class RunBusyError(RuntimeError):
    """Another process is writing the run."""


class RunInterruptedError(RuntimeError):
    """The run's last write was interrupted; ``check_run(repair=True)`` finishes it."""


# ---------------------------------------------------------------------------
# the claim


def _claims():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[CLAIMS_COLLECTION]


def _claim_id(dataset, run_key):
    return f"{dataset._doc.id}/{run_key}"


def _process_space():
    """What makes a pid meaningful (host, boot and pid namespace), or None
    where that cannot be told (then only expiry frees a dead owner's claim)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{socket.gethostname()}|{boot}|{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _start_time(pid):
    import psutil

    return psutil.Process(pid).create_time()


def _owner_alive(owner):
    """True or False for an owner in this process space; None when unknown."""
    import psutil

    space = _process_space()
    if space is None or owner.get("space") != space:
        return None
    try:
        process = psutil.Process(owner["pid"])
        same = abs(process.create_time() - owner.get("started", 0.0)) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _at_work(claim):
    """Whether a claim document's owner is at work: alive here, or elsewhere
    and not expired."""
    owner = (claim or {}).get("owner")
    if not owner:
        return False
    alive = _owner_alive(owner)
    if alive is not None:
        return alive
    return claim.get("expires_at") is not None and claim["expires_at"] > datetime.utcnow()


def _utc(moment):
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "an unknown time"


def describe_owner(owner):
    return f"{owner.get('action')} (pid {owner.get('pid')} on {owner.get('host')}, since {_utc(owner.get('since'))})"


def interrupted_message(run_key, journal):
    return (
        f"Run '{run_key}' was interrupted while {journal.get('action')} (started "
        f"{_utc(journal.get('started_at'))}); repair it with "
        f"clustering.check_run(dataset, '{run_key}', repair=True) (Repair in the Clusters "
        "panel) or delete it"
    )


class RunClaim:
    """One process's claim on one run key (see the module docstring)."""

    def __init__(self, dataset, run_key, action):
        self.run_key = run_key
        self.id = _claim_id(dataset, run_key)
        self.token = uuid.uuid4().hex
        self.owner = {
            "token": self.token,
            "action": action,
            "host": socket.gethostname(),
            "space": _process_space(),
            "pid": os.getpid(),
            "started": _start_time(os.getpid()),
        }
        self.found_journal = None  # left by an interrupted writer
        self._lost = False
        self._stop = threading.Event()
        self._thread = None

    def _mine(self):
        return {"_id": self.id, "owner.token": self.token}

    def _take(self, match, upsert):
        """Makes this process the owner of the claim document matching
        ``match``: the document after the update, or None."""
        from pymongo import ReturnDocument

        owner = dict(self.owner, since=datetime.utcnow())
        return _claims().find_one_and_update(
            match,
            [{"$set": {
                "owner": {"$literal": owner},
                "expires_at": {"$add": ["$$NOW", int(CLAIM_TTL_S * 1000)]},
            }}],
            upsert=upsert,
            return_document=ReturnDocument.AFTER,
        )

    def acquire(self, wait=0.0):
        """Takes the claim, waiting up to ``wait`` seconds for another owner."""
        from pymongo.errors import DuplicateKeyError

        deadline = time.monotonic() + wait
        expired = {"_id": self.id, "$expr": {"$lt": ["$expires_at", "$$NOW"]}}
        while True:
            try:
                doc = self._take({"_id": self.id, "owner": None}, upsert=True)
            except DuplicateKeyError:  # the document exists and is held
                doc = self._take(expired, upsert=False)
            if doc is None:
                held = _claims().find_one({"_id": self.id}) or {}
                owner = held.get("owner")
                if owner and _owner_alive(owner) is False:  # its process is gone
                    doc = self._take({"_id": self.id, "owner.token": owner["token"]}, upsert=False)
            if doc is not None:
                break
            if owner and time.monotonic() >= deadline:
                raise RunBusyError(
                    f"Run '{self.run_key}' is being written by {describe_owner(owner)}; "
                    "try again when it has finished"
                )
            time.sleep(_POLL_S)
        self.found_journal = doc.get("journal")
        self._thread = threading.Thread(target=self._renew, name=f"claim-{self.run_key}", daemon=True)
        self._thread.start()
        return self

    def _renew(self):
        while not self._stop.wait(CLAIM_TTL_S / 6):
            try:
                done = _claims().update_one(
                    self._mine(), [{"$set": {"expires_at": {"$add": ["$$NOW", int(CLAIM_TTL_S * 1000)]}}}]
                )
            except Exception:  # the database did not answer this time
                continue
            if not done.matched_count:
                self._lost = True
                return

    def verify(self):
        """Raises :class:`RunBusyError` when the claim was taken over (this
        process stalled past its expiry)."""
        if self._lost or not _claims().count_documents(self._mine(), limit=1):
            self._lost = True
            raise RunBusyError(
                f"Lost the claim on run '{self.run_key}': this process stalled for over "
                f"{CLAIM_TTL_S:.0f} s and another writer took the run over"
            )

    def begin(self, action, params=None):
        """Records the step about to be written; returns its edit id."""
        self.verify()
        edit_id = uuid.uuid4().hex
        journal = {"action": action, "params": params or {}, "edit_id": edit_id, "started_at": datetime.utcnow()}
        _claims().update_one(self._mine(), {"$set": {"journal": journal}})
        return edit_id

    def end(self):
        """The journaled step is complete."""
        _claims().update_one(self._mine(), {"$set": {"journal": None}})
        self.found_journal = None

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        claims = _claims()
        if not claims.delete_one(dict(self._mine(), journal=None)).deleted_count:
            claims.update_one(self._mine(), {"$set": {"owner": None}})


def claim_state(dataset, run_key):
    """The claim document of a run (``owner``, ``journal``), or None."""
    return _claims().find_one({"_id": _claim_id(dataset, run_key)})


def pending_write(samples, run_key):
    """None, or a sentence saying that the run is being written or that its
    last write was interrupted."""
    claim = claim_state(samples._root_dataset, run_key) or {}
    if _at_work(claim):
        return f"being written by {describe_owner(claim['owner'])}"
    if claim.get("journal"):
        return interrupted_message(run_key, claim["journal"])
    return None


@contextmanager
def claimed(samples, run_key, action, wait=0.0, allow_interrupted=False):
    """Holds the claim on ``run_key`` for ``action``, with the dataset's run
    documents reloaded; refuses a run left interrupted unless
    ``allow_interrupted``."""
    dataset = samples._root_dataset
    claim = RunClaim(dataset, run_key, action).acquire(wait)
    try:
        if claim.found_journal and not allow_interrupted:
            raise RunInterruptedError(interrupted_message(run_key, claim.found_journal))
        cr.refresh(dataset)
        yield claim
    finally:
        claim.release()


# ---------------------------------------------------------------------------
# the latest stored state


def latest_results(samples, run_key, reuse=True):
    """The run's :class:`clustering.runs.ClusteringResults` as stored now.
    With ``reuse``, the process's cached copy while the stored results and
    config are those it was loaded from (readers); else a new copy (writers
    edit it)."""
    dataset = samples._root_dataset
    config = cr.get_clustering_run_config(dataset, run_key)
    doc = cr.run_document(dataset, run_key)
    stamp = (doc.get("results"), doc.get("config"))
    cached = dataset._run_cache.get(run_key)
    if reuse and cached is not None and getattr(cached, "_stamp", None) == stamp:
        return cached
    dataset._run_cache.pop(run_key, None)
    if doc.get("results") is None:
        raise ValueError(f"Run '{run_key}' has no stored results (it was interrupted while computing)")
    if getattr(dataset._doc.runs[run_key].results, "grid_id", None) != doc["results"]:
        dataset._doc.runs[run_key].reload()  # another process stored new results
    results = dataset.load_run_results(run_key, cache=False)
    if not isinstance(results, cr.ClusteringResults):  # stored by an older class
        results = cr.ClusteringResults._from_dict(
            {k: v for k, v in vars(results).items() if not k.startswith("_")}, results.samples, config, run_key
        )
    results._stamp = stamp
    dataset._run_cache[run_key] = results
    return results


def _save_results(dataset, run_key, results):
    """Stores ``results`` and its config as the run's state, in one update of
    the run's document: the new results file is written first, the document
    then points to it (with the new config), and the old file is deleted
    last, so that a crash leaves the old state or the new one."""
    import gridfs
    from bson import json_util

    import fiftyone.core.odm as foo

    db = foo.get_db_conn()
    files = gridfs.GridFS(db)  # the RunDocument's results FileField
    new = files.put(json_util.dumps(results.serialize()).encode(), content_type="application/json")
    config = results.config.serialize()
    old = db.runs.find_one_and_update(
        {"_dataset_id": dataset._doc.id, "key": run_key},
        {"$set": {"results": new, "config": config, "results_meta": dict(results.get_meta() or {})}},
    )
    if old.get("results") is not None:
        files.delete(old["results"])
    dataset._doc.runs[run_key].reload()
    results._stamp = (new, config)
    dataset._run_cache[run_key] = results


# ---------------------------------------------------------------------------
# the fields a run's results define


def stability_score(stability, labels):
    """The size-weighted mean of the clusters' stability scores (None without any)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    sizes = {c: int(counts[int(c)]) if int(c) < len(counts) else 0 for c in stability}
    total = sum(sizes.values())
    return float(sum(s * sizes[c] for c, s in stability.items()) / total) if total else None


def representative_ranks(labels, losses, n):
    """rank 1..n of the n smallest-loss members of each cluster (0 = unranked),
    and {cluster: member indices best first}."""
    order = np.lexsort((losses, labels))  # by cluster, then loss; ties by index
    ordered = labels[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(order)]
    ranks = np.zeros(len(labels), dtype=np.int64)
    reps = {}
    for s, e in zip(starts, ends):
        if ordered[s] < 0:
            continue
        best = order[s : min(e, s + n)]
        ranks[best] = np.arange(1, len(best) + 1)
        reps[int(ordered[s])] = best
    return ranks, reps


def expected_columns(results):
    """{path: values aligned with ``results.sample_ids``} that the run's
    fields hold (None = unset)."""
    config = results.config
    labels = np.asarray(results.labels, dtype=np.int64).tolist()
    losses = np.asarray(results.sample_losses, dtype=np.float64).tolist()
    rank = {i: r for ids in (results.representatives or {}).values() for r, i in enumerate(ids, 1)}
    columns = {
        config.label_field: labels,
        config.loss_field: [v if np.isfinite(v) else None for v in losses],
        config.rep_field: [rank.get(i) for i in results.sample_ids],
    }
    name_field = config.name_field
    if name_field:
        names = getattr(results, "names", None) or {}
        columns[name_field] = [names.get(str(c)) if c >= 0 else None for c in labels]
    if config.path_field:
        paths = tree_paths(results)
        columns[config.path_field] = [paths.get(c) for c in labels]
    return columns


def tree_paths(results):
    """{cluster: its path in a cluster tree, e.g. ``"7/2"``} for a level of a
    tree (its ``parents`` and their ``parent_paths``); empty otherwise."""
    parents = getattr(results, "parents", None) or {}
    parent_paths = getattr(results, "parent_paths", None) or {}
    return {int(c): f"{parent_paths[str(p)]}/{c}" for c, p in parents.items()}


def _stored_columns(dataset, config, paths):
    """``(ids, {path: values})`` of every sample (label, for a run on patches)
    that holds any of ``paths``."""
    from fiftyone import ViewField as F

    paths = [p for p in paths if dataset.has_field(p)]
    if not paths:
        return [], {}
    patches_field = config.patches_field
    if patches_field:
        root, _ = dataset._get_label_field_root(patches_field)
        found = dataset.values([f"{root}.id", *paths], unwind=True)
        keep = [n for n in range(len(found[0])) if any(v[n] is not None for v in found[1:])]
        return [found[0][n] for n in keep], {p: [v[n] for n in keep] for p, v in zip(paths, found[1:])}
    found = dataset.match(F.any([F(p).exists() for p in paths])).values(["id", *paths])
    return found[0], dict(zip(paths, found[1:]))


def field_mismatches(dataset, results):
    """{path: number of samples whose stored value differs from what the
    run's results define}, samples outside the run that hold a value included."""
    expected = expected_columns(results)
    ids, stored = _stored_columns(dataset, results.config, list(expected))
    held = dict(zip(ids, range(len(ids))))
    existing = set(_existing(dataset, results.config, results.sample_ids))
    out = {}
    for path, want in expected.items():
        have = stored.get(path) or [None] * len(ids)
        bad = sum(
            (have[held[i]] if i in held else None) != want[n]
            for n, i in enumerate(results.sample_ids)
            if i in existing
        )
        inside = set(results.sample_ids)
        bad += sum(1 for i, v in zip(ids, have) if i not in inside and v is not None)
        if bad:
            out[path] = int(bad)
    return out


def _existing(dataset, config, ids):
    """Those of ``ids`` (samples, or labels for a run on patches) that still exist."""
    patches_field = config.patches_field
    if patches_field:
        root, _ = dataset._get_label_field_root(patches_field)
        present = set(dataset.values(f"{root}.id", unwind=True))
    else:
        present = set(dataset.select(list(ids)).values("id"))
    return [i for i in ids if i in present]


def rewrite_fields(dataset, results, progress=None):
    """Writes every field value of the run from its results, and clears the
    run's fields on samples outside it."""
    import fiftyone as fo

    config = results.config
    expected = expected_columns(results)
    kinds = {
        "label_field": fo.IntField, "loss_field": fo.FloatField, "rep_field": fo.IntField,
        "name_field": fo.StringField, "path_field": fo.StringField,
    }
    for key, kind in kinds.items():
        path = getattr(config, key, None)
        if path and not dataset.has_field(path):
            dataset.add_sample_field(path, kind)
    held, _ = _stored_columns(dataset, config, list(expected))
    inside = set(results.sample_ids)
    stray = [i for i in held if i not in inside]
    present = set(_existing(dataset, config, results.sample_ids))
    keep = [n for n, i in enumerate(results.sample_ids) if i in present]
    storage.write_columns(
        dataset,
        [results.sample_ids[n] for n in keep] + stray,
        {p: [v[n] for n in keep] + [None] * len(stray) for p, v in expected.items()},
        patches_field=config.patches_field,
        progress=progress,
    )


def label_values(results, samples, use_names):
    """{sample id: fo.Classification or None} that ``to_labels`` writes for
    the run's samples in ``samples``: the cluster's name (``use_names``) or
    ``cluster_<id>``, confidence = the share of the cluster's members whose
    loss is at least the sample's; None for HDBSCAN noise."""
    import fiftyone as fo

    labels = np.asarray(results.labels, dtype=np.int64)
    confidence = _confidence(labels, np.asarray(results.sample_losses, dtype=np.float64))
    names = (getattr(results, "names", None) or {}) if use_names else {}
    present = set(samples.values("id"))
    return {
        sid: fo.Classification(label=names.get(str(c)) or f"cluster_{c}", confidence=float(confidence[n])) if c >= 0 else None
        for n, (sid, c) in enumerate(zip(results.sample_ids, labels.tolist()))
        if sid in present
    }


def _confidence(labels, losses):
    """Per sample: the share of its cluster's members with a loss at least its own."""
    out = np.zeros(len(labels))
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        values = np.nan_to_num(losses[members], nan=np.inf)
        smaller = np.searchsorted(np.sort(values), values, side="left")
        out[members] = 1.0 - smaller / len(members)
    return out


def members_in(results, samples, cluster):
    """The ids of the members of ``cluster`` that are in ``samples``."""
    present = set(samples.values("id"))
    labels = np.asarray(results.labels)
    return [results.sample_ids[i] for i in np.flatnonzero(labels == cluster) if results.sample_ids[i] in present]


def view_of(dataset, stages):
    """The view whose stages :func:`view_stages` recorded (the dataset for None)."""
    import fiftyone.core.view as fov

    return fov.DatasetView._build(dataset, stages) if stages else dataset


def view_stages(samples):
    """The stages of a view (None for a dataset), for a journal."""
    return None if samples is samples._root_dataset else samples._serialize(include_uuids=False)


def apply_labels(dataset, results, params):
    """The write of ``to_labels`` (journal ``params``: ``label_field``,
    ``use_names``, ``view``); returns how many labels it wrote."""
    import fiftyone as fo

    values = label_values(results, view_of(dataset, params.get("view")), params["use_names"])
    label_field = params["label_field"]
    if not dataset.has_field(label_field):
        dataset.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
    storage.write_fields(dataset, {label_field: values})
    return sum(v is not None for v in values.values())


def apply_tags(dataset, results, params):
    """The write of ``tag_cluster`` / ``untag_cluster`` (journal ``params``:
    ``cluster``, ``tags``, ``add``, ``view``); returns how many samples."""
    ids = members_in(results, view_of(dataset, params.get("view")), params["cluster"])
    view = dataset.select(ids)
    (view.tag_samples if params["add"] else view.untag_samples)(params["tags"])
    return len(ids)


#: journaled steps that write more than the run's own fields, re-applied by a repair
_SIDE_WRITES = {"to_labels": apply_labels, "tag_cluster": apply_tags, "untag_cluster": apply_tags}


# ---------------------------------------------------------------------------
# writing: a new run, an edit, a rename, a deletion


def store_new_run(samples, claim, run_key, ids, sample_ids, out, config, timings, t_start, transform_state,
                  inherited=None, overwrite=False, progress=None):
    """Stores a computed run under ``claim``: its results (from the method's
    output ``out`` over the rows ``ids``; ``sample_ids`` holds the samples of
    the labels of a run on patches), registered with status ``"writing"``,
    its fields, then its results with status ``"completed"``. An existing run
    with this key is deleted first (``overwrite``); a failure deletes the new
    run. ``inherited``: names, descriptions, naming, edits, tree parents that
    the results start with (a re-run that keeps its clusters' identity, a
    level of a cluster tree). Returns the results."""
    from ..naming.names import default_name_field

    labels = np.asarray(out.labels, dtype=np.int64)
    losses = np.asarray(out.sample_losses, dtype=np.float64)
    ranks, reps = representative_ranks(labels, np.nan_to_num(losses, nan=np.inf), int(config["num_representatives"]))
    id_strings = storage.id_strings(ids)
    run_config = cr.config_class(config["method"])(**config)
    inherited = inherited or {}
    results = cr.ClusteringResults(
        samples,
        run_config,
        run_key,
        sample_ids=id_strings,
        labels=labels,
        sample_losses=losses,
        centers=np.asarray(out.centers, dtype=np.float32),
        cluster_sizes=np.bincount(labels[labels >= 0], minlength=len(out.centers)),
        objective=float(out.objective),
        objective_history=np.asarray(out.objective_history, dtype=np.float64),
        n_iter=out.n_iter,
        representatives={str(c): [id_strings[i] for i in idx] for c, idx in reps.items()},
        timings=dict(timings),
        names=inherited.get("names", {}),
        descriptions=inherited.get("descriptions", {}),
        naming=inherited.get("naming", {}),
        edits=inherited.get("edits", []),
        stability=inherited.get("stability", {}),
        stability_score=stability_score(inherited.get("stability", {}), labels),
        **{k: inherited[k] for k in ("parents", "parent_paths") if k in inherited},
        **transform_state,
    )
    if results.names:  # names a re-run inherited
        run_config.name_field = default_name_field(run_key)
    columns = {
        run_config.label_field: labels,
        run_config.loss_field: np.ma.masked_invalid(losses),
        run_config.rep_field: np.ma.masked_equal(ranks, 0),
    }
    columns.update({p: v for p, v in expected_columns(results).items() if p not in columns})  # names, paths
    _write_new_run(samples, claim, run_key, results, columns, ids, sample_ids, overwrite, t_start, progress)
    return results


def _write_new_run(samples, claim, run_key, results, columns, ids, sample_ids, overwrite, t_start, progress):
    import fiftyone as fo

    dataset = samples._root_dataset
    config = results.config
    fields = {k: getattr(config, k) for k in cr.FIELD_KEYS if getattr(config, k, None)}
    claim.begin("compute_clusters", {"fields": fields})
    if overwrite and run_key in dataset.list_runs():
        dataset.delete_run(run_key)  # also deletes its fields
    t0 = time.perf_counter()
    config.status = "writing"
    samples.register_run(run_key, config, overwrite=overwrite)
    try:
        kinds = {
            "label_field": fo.IntField, "loss_field": fo.FloatField, "rep_field": fo.IntField,
            "name_field": fo.StringField, "path_field": fo.StringField,
        }
        for key, kind in kinds.items():
            if key in fields:
                dataset.add_sample_field(fields[key], kind)
        storage.write_columns(
            dataset, ids, columns, patches_field=config.patches_field, sample_ids=sample_ids, progress=progress,
        )
        claim.verify()
        results.timings["write_s"] = time.perf_counter() - t0
        results.timings["total_s"] = time.perf_counter() - t_start
        config.status = "completed"
        _save_results(dataset, run_key, results)
    except RunBusyError:  # another writer took the run over: it is theirs now
        raise
    except BaseException:
        dataset.delete_run(run_key)
        claim.end()
        raise
    claim.end()


def delete_run(samples, run_key):
    """Deletes a run, its results and its fields (also one left interrupted),
    and the levels of a cluster tree below it; returns the fields deleted."""
    dataset = samples._root_dataset
    for child in cr.child_runs(dataset, run_key) if run_key in dataset.list_runs() else ():
        delete_run(dataset, child)
    with claimed(dataset, run_key, "delete_run", wait=EDIT_WAIT_S, allow_interrupted=True) as claim:
        journal = claim.found_journal or {}
        if run_key not in dataset.list_runs() and not journal:
            cr.get_clustering_run_config(dataset, run_key)  # the error naming the runs
        fields = dict((journal.get("params") or {}).get("fields") or {})
        if run_key in dataset.list_runs():
            config = cr.get_clustering_run_config(dataset, run_key)
            fields.update({k: getattr(config, k) for k in cr.FIELD_KEYS if getattr(config, k, None)})
        claim.begin("delete_run", {"fields": fields})
        _finish_delete(dataset, run_key, fields)
        claim.end()
    return fields


def _finish_delete(dataset, run_key, fields):
    if run_key in dataset.list_runs():
        dataset.delete_run(run_key)
    existing = [f for f in fields.values() if f and dataset.has_field(f)]
    if existing:
        dataset.delete_sample_fields(existing)


def rename_run(samples, run_key, new_run_key):
    """Renames a run and the fields named after it (``{run_key}_*``); returns
    the run's fields."""
    dataset = samples._root_dataset
    if not isinstance(new_run_key, str) or not new_run_key.isidentifier():
        raise ValueError(f"Invalid new run key {new_run_key!r}: use a Python identifier")
    with claimed(dataset, run_key, "rename_run", wait=EDIT_WAIT_S) as claim, claimed(dataset, new_run_key, "rename_run"):
        config = cr.get_clustering_run_config(dataset, run_key)
        if new_run_key in dataset.list_runs():
            raise ValueError(f"A run with key '{new_run_key}' already exists")
        for k in cr.FIELD_KEYS:
            name = getattr(config, k, None)
            target = name and cr.renamed_path(name, run_key, new_run_key)
            if target and dataset.has_field(target):
                raise ValueError(f"Cannot rename: field '{target}' already exists")
        claim.begin("rename_run", {"new_run_key": new_run_key})
        dataset.rename_run(run_key, new_run_key)
        claim.end()
    _relink(dataset, run_key, new_run_key)
    config = cr.get_clustering_run_config(dataset, new_run_key)
    return {k: getattr(config, k) for k in cr.FIELD_KEYS if getattr(config, k, None)}


def _relink(dataset, old, new):
    """The levels of a cluster tree that named run ``old`` as their parent or
    top run name ``new`` instead."""
    for key in cr.list_clustering_runs(dataset):
        config = dataset.get_run_info(key).config
        if old in (config.parent_run, config.root_run):
            with claimed(dataset, key, "rename_run", wait=EDIT_WAIT_S):
                config = cr.get_clustering_run_config(dataset, key)
                config.parent_run = new if config.parent_run == old else config.parent_run
                config.root_run = new if config.root_run == old else config.root_run
                dataset.update_run_config(key, config)


class RunEdit:
    """A run's latest stored state, claimed for one action and edited in
    memory (``labels``, ``losses``, ``centers``, names); :meth:`save` stores
    what changed as one recoverable step. Use as a context manager::

        with RunEdit(samples, run_key, "merge_clusters") as edit:
            ...
            edit.save(params, outcome)
    """

    def __init__(self, samples, run_key, action, images_only=False, wait=EDIT_WAIT_S):
        self.samples, self.dataset = samples, samples._root_dataset
        self.run_key, self.action = run_key, action
        self._images_only, self._wait = images_only, wait
        self._claimed = None

    def __enter__(self):
        self._claimed = claimed(self.dataset, self.run_key, self.action, self._wait)
        self.claim = self._claimed.__enter__()
        try:
            self._load()
        except BaseException as e:
            self._claimed.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def __exit__(self, *exc):
        return self._claimed.__exit__(*exc)

    def _load(self):
        config = cr.get_clustering_run_config(self.dataset, self.run_key)
        if config.status != "completed":
            raise ValueError(
                f"Run '{self.run_key}' is incomplete (its computation was interrupted); "
                f"repair it with clustering.check_run(dataset, '{self.run_key}', repair=True) or delete it"
            )
        if self._images_only:
            cr.require_sample_run(config, self.run_key, self.action)
        self.results = results = latest_results(self.dataset, self.run_key, reuse=False)
        self.config = results.config
        self.ids = list(results.sample_ids)
        self.labels = np.array(results.labels, dtype=np.int64)
        self.losses = np.array(results.sample_losses, dtype=np.float64)
        self.centers = np.array(results.centers, dtype=np.float32)
        self.naming = dict(getattr(results, "naming", None) or {})
        raw = self.naming.get("raw_names") or {}
        names = getattr(results, "names", None) or {}
        self.raw_names = {c: raw.get(c) or n for c, n in names.items() if n}
        self.provenance = dict(self.naming.get("clusters") or {})
        self.descriptions = dict(getattr(results, "descriptions", None) or {})
        # in a level of a cluster tree: each cluster's parent, and the parents' paths
        self.parents = {str(c): int(p) for c, p in (getattr(results, "parents", None) or {}).items()}
        self.stability = dict(getattr(results, "stability", None) or {})
        self.parent_paths = dict(getattr(results, "parent_paths", None) or {})
        self.touched = set()  # clusters whose members or losses changed

    # -- reading
    def cluster_ids(self):
        return sorted(int(c) for c in np.unique(self.labels) if c >= 0)

    # -- editing
    def retire(self, c):
        """Cluster ``c`` no longer exists: no center, no name, no parent."""
        self.centers[c] = np.nan
        for d in (self.raw_names, self.provenance, self.descriptions, self.parents):
            d.pop(str(c), None)

    def new_clusters(self, centers):
        """Ids for new clusters with ``centers`` (ids never used by the run)."""
        first = len(self.centers)
        self.centers = np.concatenate([self.centers, np.asarray(centers, dtype=np.float32)])
        return list(range(first, len(self.centers)))

    def append(self, ids, labels, losses):
        self.ids += list(ids)
        self.labels = np.concatenate([self.labels, labels])
        self.losses = np.concatenate([self.losses, losses])

    # -- storing
    def _representatives(self):
        """{cluster (str): [ids, best first]}: stored for untouched clusters,
        re-ranked for touched ones."""
        live = set(self.cluster_ids())
        reps = {c: ids for c, ids in self.results.representatives.items() if int(c) in live - self.touched}
        rows = np.flatnonzero(np.isin(self.labels, sorted(self.touched)))
        n = int(self.config.num_representatives)
        _, best = representative_ranks(self.labels[rows], np.nan_to_num(self.losses[rows], nan=np.inf), n)
        reps.update({str(c): [self.ids[rows[i]] for i in idx] for c, idx in best.items()})
        return dict(sorted(reps.items(), key=lambda kv: int(kv[0])))

    def save(self, params, outcome=None, side_write=None):
        """Stores the edited state: the journal, the results and config (with
        the action recorded in ``edits``), the changed field values, then
        ``side_write`` (journal ``params`` describe it, see :data:`_SIDE_WRITES`);
        returns what ``side_write`` returned."""
        results, config = self.results, self.config
        old_columns = expected_columns(results)
        old_ids = list(results.sample_ids)

        manual = {c for c, p in self.provenance.items() if p.get("provider") == HAND_WRITTEN}
        names = make_unique(dict(sorted(self.raw_names.items(), key=lambda kv: int(kv[0]))), keep=manual)
        if names or config.name_field:
            config.name_field = name_field_of(self.dataset, self.run_key, config)
        live = self.cluster_ids()
        self.naming["raw_names"] = dict(self.raw_names)
        self.naming["clusters"] = self.provenance
        self.naming["errors"] = {c: e for c, e in (self.naming.get("errors") or {}).items() if int(c) in live}
        results.sample_ids = list(self.ids)
        results.labels = self.labels
        results.sample_losses = self.losses
        results.centers = self.centers
        results.cluster_sizes = np.bincount(self.labels[self.labels >= 0], minlength=len(self.centers))
        results.objective = float(np.nansum(self.losses))
        results.representatives = self._representatives()
        results.names = names
        results.descriptions = {c: d for c, d in self.descriptions.items() if c in names}
        results.naming = self.naming
        results.stability = {c: s for c, s in self.stability.items() if int(c) in live}
        results.stability_score = stability_score(results.stability, self.labels)
        if self.parents or self.parent_paths:
            results.parents, results.parent_paths = self.parents, self.parent_paths
        if config.k is not None:
            config.k = len(live)
        config.num_clustered = len(self.ids)

        edit_id = self.claim.begin(self.action, params)
        record = {
            "id": edit_id, "action": self.action, "params": _public(params), "outcome": outcome or {},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        results.edits = list(getattr(results, "edits", None) or []) + [record]
        try:
            _save_results(self.dataset, self.run_key, results)
            self._write_changes(old_ids, old_columns)
            out = side_write(self.dataset, results, params) if side_write else None
        except Exception:
            self._recover()
            raise
        self.claim.end()
        return out

    def _write_changes(self, old_ids, old_columns):
        import fiftyone as fo

        new_columns = expected_columns(self.results)
        row = {i: n for n, i in enumerate(old_ids)}
        changed = {}
        for path, values in new_columns.items():
            before = old_columns.get(path)
            changed[path] = {
                i: v for i, v in zip(self.ids, values)
                if (before[row[i]] if before is not None and i in row else None) != v
            }
        name_field = self.config.name_field
        if name_field and not self.dataset.has_field(name_field):
            self.dataset.add_sample_field(name_field, fo.StringField)
        storage.write_fields(
            self.dataset, {p: v for p, v in changed.items() if v},
            patches_field=self.config.patches_field,
        )

    def _recover(self):
        """After a failed write: the fields rewritten from whatever results are
        stored; the journal stays when that fails too."""
        try:
            rewrite_fields(self.dataset, latest_results(self.dataset, self.run_key, reuse=False))
            self.claim.end()
        except Exception:
            logger.exception("Run '%s' could not be restored after a failed %s", self.run_key, self.action)


def _public(params):
    """Journal parameters as recorded in ``edits`` (without the view's stages)."""
    return {k: v for k, v in params.items() if k not in ("view", "add")}


# ---------------------------------------------------------------------------
# checking and repairing


def check_run(samples, run_key, repair=False, progress=None):
    """Checks that run ``run_key`` is consistent: not being written, no
    interrupted step, status completed, cluster sizes equal to its labels, and
    its fields equal to its results (every clustered sample's cluster, loss,
    representative rank and name; no value on samples outside the run).

    With ``repair=True`` (taking the run's claim) it finishes an interrupted
    step (see the module docstring) and rewrites the fields from the results,
    then checks again.

    Returns:
        a dict: ``run_key``, ``state`` (``"consistent"``, ``"busy"``,
        ``"interrupted"``, ``"inconsistent"`` or ``"missing"``), ``problems``
        (sentences), ``mismatches`` ({field: samples}), ``journal`` (the
        interrupted step) and, after a repair, ``repaired`` (what it did)
    """
    dataset = samples._root_dataset
    if repair:
        done = _repair(dataset, run_key, progress)
        return dict(check_run(dataset, run_key), repaired=done)
    report = {"run_key": run_key, "state": "consistent", "problems": [], "mismatches": {}, "journal": None}
    claim = claim_state(dataset, run_key) or {}
    if _at_work(claim):
        report["problems"].append(f"Run '{run_key}' is being written by {describe_owner(claim['owner'])}")
        report["state"] = "busy"
        return report
    journal = claim.get("journal")
    if journal:
        report["journal"] = {k: journal.get(k) for k in ("action", "params", "started_at")}
        report["problems"].append(interrupted_message(run_key, journal))
    cr.refresh(dataset)
    if run_key not in dataset.list_runs():
        if not journal:
            report["problems"].append(f"No run with key '{run_key}'")
        report["state"] = "interrupted" if journal else "missing"
        return report
    config = cr.get_clustering_run_config(dataset, run_key)
    if config.status != "completed":
        report["problems"].append(f"Run '{run_key}' has status '{config.status}': its computation was interrupted")
    else:
        results = latest_results(dataset, run_key, reuse=False)
        labels = np.asarray(results.labels)
        sizes = np.bincount(labels[labels >= 0], minlength=len(results.cluster_sizes))
        if not np.array_equal(sizes, np.asarray(results.cluster_sizes)):
            report["problems"].append("The stored cluster sizes differ from the labels")
        report["mismatches"] = field_mismatches(dataset, results)
        for path, n in report["mismatches"].items():
            report["problems"].append(f"{n} samples hold a value of '{path}' other than the run's results")
    if journal:
        report["state"] = "interrupted"
    elif report["problems"]:
        report["state"] = "inconsistent"
    return report


def _repair(dataset, run_key, progress):
    """Finishes an interrupted step and makes the fields equal the results;
    returns what it did, in sentences."""
    with claimed(dataset, run_key, "check_run", wait=EDIT_WAIT_S, allow_interrupted=True) as claim:
        journal = claim.found_journal or {}
        action, params = journal.get("action"), journal.get("params") or {}
        done = []
        if action == "delete_run":
            _finish_delete(dataset, run_key, params.get("fields") or {})
            done.append("finished deleting the run")
        elif action == "rename_run":
            if run_key in dataset.list_runs():
                dataset.rename_run(run_key, params["new_run_key"])
            done.append(f"finished renaming the run to '{params['new_run_key']}'")
        elif run_key not in dataset.list_runs():
            _finish_delete(dataset, run_key, params.get("fields") or {})
            if journal:
                done.append("removed the fields of a computation interrupted before it registered its run")
        elif cr.run_document(dataset, run_key).get("results") is None:
            fields = {k: getattr(cr.get_clustering_run_config(dataset, run_key), k, None) for k in cr.FIELD_KEYS}
            _finish_delete(dataset, run_key, {**(params.get("fields") or {}), **fields})
            done.append("deleted a run whose computation was interrupted before its results were stored")
        else:
            results = latest_results(dataset, run_key, reuse=False)
            applied = any(e.get("id") == journal.get("edit_id") for e in getattr(results, "edits", None) or [])
            if applied and action in _SIDE_WRITES:
                _SIDE_WRITES[action](dataset, results, params)
                done.append(f"re-applied {action}")
            rewrite_fields(dataset, results, progress=progress)
            done.append("rewrote the run's fields from its results")
            if results.config.status != "completed":
                results.config.status = "completed"
                dataset.update_run_config(run_key, results.config)
                done.append("marked the run completed")
        claim.end()
        return done
