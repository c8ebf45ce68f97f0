"""Bulk reading and writing (clustering.runs.storage) against FiftyOne's own
``values()`` / ``set_values`` / ``set_label_values``, on a real MongoDB: the
same values, for every kind of embeddings field, views and patches, and
nothing else touched."""

import json

import numpy as np
import pytest
from bson import ObjectId

from clustering.runs import _bson_kernels as K
from clustering.runs import storage

N = 120
DIM = 24


@pytest.fixture(params=["kernels", "python"])
def decoder(request, monkeypatch):
    """Runs a test with the numba kernels and again with the Python decoder."""
    if request.param == "kernels" and not K.AVAILABLE:
        pytest.skip("numba or zlib's shared library is not available")
    if request.param == "python":
        monkeypatch.setattr(K, "AVAILABLE", False)
    return request.param


@pytest.fixture
def vectors_dataset(fo, request):
    """Samples with embeddings stored every way FiftyOne stores them: float32
    and float64 vectors, 2-D arrays, lists of floats and of ints, some missing,
    and detections with vectors on their labels."""
    rng = np.random.default_rng(0)
    name = "storage-" + request.node.name[:50]
    dataset = fo.Dataset(name, overwrite=True)
    samples = []
    for i in range(N):
        detections = [fo.Detection(label=f"l{j}", bounding_box=[0.1, 0.1, 0.2, 0.2]) for j in range(i % 4)]
        samples.append(
            fo.Sample(
                filepath=f"/nowhere/{i}.jpg",
                rank=int(rng.integers(100)),
                note=f"note {i}",
                gt=fo.Detections(detections=detections),
            )
        )
    dataset.add_samples(samples, progress=False)
    ids = dataset.values("id")
    X = rng.normal(size=(N, DIM)).astype(np.float32)
    missing = set(range(0, N, 7))
    dataset.set_values("v32", {i: (None if r in missing else X[r]) for r, i in enumerate(ids)}, key_field="id")
    dataset.set_values("v64", {i: X[r].astype(np.float64) * 3 for r, i in enumerate(ids)}, key_field="id")
    dataset.add_sample_field("arr", fo.ArrayField)
    dataset.set_values("arr", {i: X[r].reshape(4, 6) for r, i in enumerate(ids) if r % 5}, key_field="id")
    dataset.set_values("lst", {i: X[r].astype(np.float64).tolist() for r, i in enumerate(ids)}, key_field="id")
    dataset.set_values("ints", {i: [int(v) for v in 10 * X[r]] for r, i in enumerate(ids)}, key_field="id")
    dataset.add_sample_field("gt.detections.emb", fo.VectorField)
    label_ids = dataset.values("gt.detections.id", unwind=True)
    dataset.set_label_values("gt.detections.emb", {i: rng.normal(size=DIM) for i in label_ids[1:]})
    dataset._sample_collection.update_one({"_id": ObjectId(ids[0])}, {"$unset": {"lst": ""}})  # absent, not null
    dataset.reload()
    yield dataset
    fo.delete_dataset(name)


def _reference(samples, field):
    """What compute_clusters read before: FiftyOne's values() stacked."""
    ids, values = samples.values(["id", field])
    have = [i for i, v in enumerate(values) if v is not None]
    X = np.stack([np.asarray(values[i], dtype=np.float32).ravel() for i in have])
    return [ids[i] for i in have], X, [ids[i] for i, v in enumerate(values) if v is None]


@pytest.mark.parametrize("field", ["v32", "v64", "arr", "lst", "ints"])
def test_reading_gives_exactly_the_values_of_values(vectors_dataset, decoder, field):
    ids, X, missing = storage.read_embeddings(vectors_dataset, field)
    ref_ids, ref_X, ref_missing = _reference(vectors_dataset, field)
    assert ids == ref_ids and missing == ref_missing
    assert X.dtype == np.float32 and X.flags.c_contiguous
    np.testing.assert_array_equal(X, ref_X)


def test_a_view_reads_its_own_samples_in_its_own_order(vectors_dataset, decoder):
    from fiftyone import ViewField as F

    view = (
        vectors_dataset.match(F("rank") > 20)
        .sort_by("rank", reverse=True)
        .skip(3)
        .limit(60)
        .select_fields("v32")
    )
    ids, X, missing = storage.read_embeddings(view, "v32")
    ref_ids, ref_X, ref_missing = _reference(view, "v32")
    assert ids == ref_ids and missing == ref_missing and len(ids) + len(missing) == 60
    np.testing.assert_array_equal(X, ref_X)

    selected = list(reversed(vectors_dataset.values("id")[10:40]))
    ids, X, _ = storage.read_embeddings(vectors_dataset.select(selected, ordered=True), "v64")
    assert ids == selected
    np.testing.assert_array_equal(X, _reference(vectors_dataset.select(selected, ordered=True), "v64")[1])


def test_patches_read_label_ids_and_their_samples(vectors_dataset, decoder):
    from fiftyone import ViewField as F

    patches = vectors_dataset.filter_labels("gt", F("label") != "l1").to_patches("gt")
    vectors = storage.VectorReader(patches, "gt.emb").read()
    ref_ids, ref_X, _ = _reference(patches, "gt.emb")
    assert storage.id_strings(vectors.ids) == ref_ids
    np.testing.assert_array_equal(vectors.X, ref_X)
    sample_of = dict(zip(*patches.values(["id", "sample_id"])))
    assert storage.id_strings(vectors.sample_ids) == [sample_of[i] for i in ref_ids]
    assert len(vectors.missing_ids) == 1


def test_sampled_and_chunked_reads_cover_the_same_rows(vectors_dataset, decoder):
    reader = storage.VectorReader(vectors_dataset, "v32")
    full = reader.read()
    positions = np.array([0, 3, 7, 50, 51, 119])
    part = reader.read(positions)
    every = storage.id_strings(np.concatenate([full.ids, full.missing_ids]))
    order = vectors_dataset.values("id")
    expected = [order[p] for p in positions if order[p] in set(storage.id_strings(full.ids))]
    assert storage.id_strings(part.ids) == expected and sorted(every) == sorted(order)
    chunks = list(reader.chunks(16))
    assert [len(c.ids) + len(c.missing_ids) for c in chunks] == [16] * 7 + [8]
    np.testing.assert_array_equal(np.concatenate([c.X for c in chunks]), full.X)
    assert storage.id_strings(np.concatenate([c.ids for c in chunks])) == storage.id_strings(full.ids)


def test_a_read_stopped_early_frees_the_server_cursor(vectors_dataset, decoder, monkeypatch):
    monkeypatch.setattr(storage, "_FETCH_BATCH", 10)  # several batches
    database = vectors_dataset._sample_collection.database

    def open_cursors():
        return database.command("serverStatus")["metrics"]["cursor"]["open"]["total"]

    before = open_cursors()
    chunks = storage.VectorReader(vectors_dataset, "v32").chunks(16)
    first = next(chunks)
    assert len(first.ids) + len(first.missing_ids) == 16
    assert open_cursors() == before + 1
    chunks.close()
    assert open_cursors() == before


def test_bad_vectors_are_refused_with_their_count(vectors_dataset, decoder, fo):
    ids = vectors_dataset.values("id")
    bad = np.full(DIM, np.nan, dtype=np.float32)
    vectors_dataset.set_values("v64", {ids[1]: bad, ids[2]: np.full(DIM, np.inf)}, key_field="id")
    with pytest.raises(ValueError, match=r"2 of \d+ rows of embeddings in 'v64' contain NaN or infinite"):
        storage.read_embeddings(vectors_dataset, "v64")
    vectors_dataset.set_values("v64", {ids[3]: np.zeros(5)}, key_field="id")
    with pytest.raises(ValueError, match=r"mismatched dimensions \[5, 24\]"):
        storage.read_embeddings(vectors_dataset, "v64")
    with pytest.raises(ValueError, match="No sample of this collection has a value in 'v32'"):
        storage.read_embeddings(vectors_dataset.select(ids[::7]), "v32")


def _raw(dataset, field):
    """Per sample (in order), the stored BSON type and bytes of ``field``."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    collection = dataset._sample_collection.with_options(CodecOptions(document_class=RawBSONDocument))
    values = []
    for doc in collection.find({}, {"_id": False, field: True}).sort("_id"):
        raw = doc.raw
        values.append(raw[4:5] + raw[4 + 1 + len(field) + 1 : -1] if len(raw) > 5 else None)
    return values


def test_writing_stores_exactly_what_set_values_stores(vectors_dataset, fo):
    ds = vectors_dataset
    ids = ds.values("id")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, N)
    losses = np.where(rng.random(N) < 0.2, np.nan, rng.random(N))
    ranks = np.where(rng.random(N) < 0.3, rng.integers(1, 4, N), 0)
    big = np.where(rng.random(N) < 0.5, rng.integers(-(2**40), 2**40, N), rng.integers(-9, 9, N))  # int64 and int32
    flags = rng.random(N) < 0.5
    fields = {"cluster": fo.IntField, "loss": fo.FloatField, "rep": fo.IntField, "big": fo.IntField,
              "flag": fo.BooleanField, "score": fo.FloatField}
    for prefix in ("a", "b"):
        for name, ftype in fields.items():
            ds.add_sample_field(f"{prefix}_{name}", ftype)
    ds.set_values("a_cluster", dict(zip(ids, labels.tolist())), key_field="id")
    ds.set_values("a_loss", {i: float(v) for i, v in zip(ids, losses) if np.isfinite(v)}, key_field="id")
    ds.set_values("a_rep", {ids[i]: int(ranks[i]) for i in np.flatnonzero(ranks)}, key_field="id")
    ds.set_values("a_big", dict(zip(ids, big.tolist())), key_field="id")
    ds.set_values("a_flag", dict(zip(ids, flags.tolist())), key_field="id")
    ds.set_values("a_score", dict(zip(ids, labels.tolist())), key_field="id")  # ints into a float field
    storage.write_columns(
        ds, ids,
        {"b_cluster": labels, "b_loss": np.ma.masked_invalid(losses), "b_rep": np.ma.masked_equal(ranks, 0),
         "b_big": big, "b_flag": flags, "b_score": labels},
    )
    for name in fields:
        assert _raw(ds, f"a_{name}") == _raw(ds, f"b_{name}"), name
    assert {_raw(ds, "b_big")[i][:1] for i in range(N)} == {b"\x10", b"\x12"}  # int32 and int64

    # the dict form, with values of any field type (a vector, None clears), as set_values
    some = {i: rng.normal(size=DIM) for i in ids[:10]}
    some[ids[0]] = None
    ds.set_values("c_vec", some, key_field="id")
    storage.write_fields(ds, {"d_vec": some, "d_note": {i: "x" for i in ids[:3]}})
    assert isinstance(ds.get_field("d_vec"), fo.VectorField) and isinstance(ds.get_field("d_note"), fo.StringField)
    assert _raw(ds, "c_vec") == _raw(ds, "d_vec")


def _snapshot(dataset, exclude=()):
    docs = {}
    for sample in dataset.iter_samples():
        d = sample.to_dict()
        for name in ("last_modified_at", *exclude):
            d.pop(name, None)
        docs[sample.id] = json.dumps(d, sort_keys=True, default=str)
    return docs


def test_writes_through_a_view_touch_only_their_paths_and_ids(vectors_dataset, fo):
    from fiftyone import ViewField as F

    ds = vectors_dataset
    view = ds.exclude_fields("note").filter_labels("gt", F("label") == "l0", only_matches=False).limit(50)
    before = _snapshot(ds)
    stamps = dict(zip(*ds.values(["id", "last_modified_at"])))
    sample = ds.first()  # an in-memory sample must not serve a stale value
    ds.add_sample_field("w", fo.IntField)
    view_ids = view.values("id")
    storage.write_columns(ds, view_ids, {"w": np.arange(50)})
    assert sample.w == 0
    after = _snapshot(ds, exclude=("w",))
    assert after == before
    assert ds.values("w") == list(range(50)) + [None] * (N - 50)
    changed = {i for i, t in zip(*ds.values(["id", "last_modified_at"])) if t != stamps[i]}
    assert changed == set(view_ids)

    with pytest.raises(ValueError, match="'nope' is not declared"):
        storage.write_columns(ds, view_ids, {"nope": np.arange(50)})
    with pytest.raises(ValueError, match="has 3 values for 50 ids"):
        storage.write_columns(ds, view_ids, {"w": np.arange(3)})


def test_label_writes_equal_set_label_values_and_spare_filtered_labels(vectors_dataset, fo):
    from fiftyone import ViewField as F

    ds = vectors_dataset
    patches = ds.filter_labels("gt", F("label") != "l1").to_patches("gt")
    label_ids, sample_ids = patches.values(["id", "sample_id"])
    values = {i: r for r, i in enumerate(label_ids)}
    ds.add_sample_field("gt.detections.a", fo.IntField)
    ds.add_sample_field("gt.detections.b", fo.IntField)
    ds.set_label_values("gt.detections.a", values)
    storage.write_columns(
        ds, label_ids, {"gt.detections.b": np.arange(len(label_ids))}, patches_field="gt", sample_ids=sample_ids
    )
    a, b = ds.values(["gt.detections.a", "gt.detections.b"])
    assert a == b and sum(v is not None for vs in b for v in (vs or [])) == len(label_ids)
    # the dict form looks the samples up; None clears
    storage.write_fields(ds, {"gt.detections.b": {label_ids[0]: None}}, patches_field="gt")
    ds.set_label_values("gt.detections.a", {label_ids[0]: None})
    assert ds.values("gt.detections.a") == ds.values("gt.detections.b")
    with pytest.raises(ValueError, match="not an attribute of the labels of 'gt'"):
        storage.write_columns(ds, label_ids, {"rank": np.arange(len(label_ids))}, patches_field="gt")


def test_progress_reports_reading_and_writing(vectors_dataset, fo):
    messages = []
    storage.read_embeddings(vectors_dataset, "v32", progress=lambda f, m: messages.append((f, m)))
    assert messages[-1] == (1.0, f"reading {N}/{N}")
    vectors_dataset.add_sample_field("w", fo.IntField)
    messages.clear()
    storage.write_columns(vectors_dataset, vectors_dataset.values("id"), {"w": np.zeros(N, int)},
                          progress=lambda f, m: messages.append((f, m)))
    assert messages[-1] == (1.0, f"writing {N}/{N}")


@pytest.mark.skipif(not K.AVAILABLE, reason="numba or the inflate libraries are not available")
def test_the_zlib_inflater_reads_the_same(vectors_dataset):
    """Where libdeflate is missing the kernels call zlib (forced here)."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = (
        "import sys, numpy as np, fiftyone as fo\n"
        "from clustering.runs import _bson_kernels as K, storage\n"
        "ds = fo.load_dataset(sys.argv[1])\n"
        "for field in ('v32', 'v64', 'arr'):\n"
        "    ids, X, _ = storage.read_embeddings(ds, field)\n"
        "    ref = [np.asarray(v, np.float32).ravel() for v in ds.select(ids, ordered=True).values(field)]\n"
        "    assert np.array_equal(X, np.stack(ref)), field\n"
        "print(K.INFLATE)\n"
    )
    vectors_dataset.persistent = True
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, vectors_dataset.name], cwd=REPO_ROOT, capture_output=True, text=True,
            env=dict(os.environ, CLUSTERING_INFLATE="zlib"), timeout=300,
        )
    finally:
        vectors_dataset.persistent = False
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "zlib"
