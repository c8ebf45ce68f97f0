"""Reading and writing sample and label fields in bulk: the one place where the
library talks to the database for many values.

Every path that reads embeddings (runs, evaluation, curation) or writes many
values (a run's fields, curation actions, embeddings) goes through here, for
samples and for the labels of a patches field alike.

Reading (:class:`VectorReader`) runs the collection's own pipeline (so a view's
filters, order and limits apply) with a projection of the id and the one field,
and decodes the server's replies on several threads straight into one
preallocated float32 matrix: compiled kernels (:mod:`clustering.runs._bson_kernels`)
find the documents in each reply and inflate FiftyOne's zlib-compressed arrays,
with no Python object per document (a Python decoder, through the field's own
``to_python``, takes what they cannot and everything without numba). The
values are exactly those of FiftyOne's ``values()``. A reader also reads a
subset of rows (a random sample) or streams the collection in chunks, with
progress (``reading n/N``).

Writing (:func:`write_columns`, :func:`write_fields`) sends unordered ``update``
commands of up to 50,000 statements on two threads (what pymongo's unordered
``bulk_write`` of ``UpdateOne`` sends, without a Python object per operation),
each statement setting every written field of one document and its
``last_modified_at`` (as FiftyOne does) by ``_id``; label attributes of a
patches field are set through array filters on the labels' ids, one statement
per sample. Only the given paths and ids are touched, whatever view the values
came from; the fields must be declared first (:func:`write_fields` declares
new ones as ``set_values`` does); in-memory samples are reloaded afterwards, as
FiftyOne's own writes do. Progress: ``writing n/N``.

Ids travel as ``(n, 12)`` uint8 arrays of ObjectId bytes (:func:`id_array`,
:func:`id_strings` convert).
"""

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from . import _bson_kernels as K
from ..features import transform as cf
from ..resources import usable_cpus

#: a value in a written column that leaves the stored value as it is
SKIP = object()
#: documents per raw batch asked of the server (it caps batches at 16 MB)
_FETCH_BATCH = 100_000
#: bytes and documents per update command
_WRITE_BYTES, _WRITE_DOCS = 8 << 20, 50_000
#: rows per write chunk (values are converted to Python a chunk at a time)
_WRITE_CHUNK = 20_000
# status of a row no document was decoded into (see _bson_kernels for the others)
_UNSEEN = 255


# ---------------------------------------------------------------------------
# ids


def id_array(ids):
    """``(n, 12)`` uint8 ObjectId bytes of ``ids`` (strings, ObjectIds or
    such an array)."""
    if isinstance(ids, np.ndarray) and ids.dtype == np.uint8:
        return ids.reshape(-1, 12)
    ids = list(ids)
    if ids and not isinstance(ids[0], str):
        return np.frombuffer(b"".join(i.binary for i in ids), dtype=np.uint8).reshape(-1, 12).copy()
    return np.frombuffer(bytes.fromhex("".join(ids)), dtype=np.uint8).reshape(-1, 12).copy()


def id_strings(ids):
    """The hex strings of an ``(n, 12)`` id array (FiftyOne's ``id`` values)."""
    text = np.ascontiguousarray(ids).tobytes().hex()
    return [text[i : i + 24] for i in range(0, len(text), 24)]


def id_keys(ids):
    """One comparable (void) value per id, for ``np.isin`` and sorting."""
    return np.ascontiguousarray(ids).view(np.dtype((np.void, 12))).ravel()


# ---------------------------------------------------------------------------
# reading


@dataclass
class Vectors:
    """Rows read from a collection: ``ids`` (``(n, 12)`` bytes: sample ids, or
    label ids in a patches view), ``X`` (float32 ``(n, d)``), ``missing_ids``
    (rows without a value) and, in a patches view, ``sample_ids`` (the samples
    holding the labels)."""

    ids: np.ndarray
    X: np.ndarray
    missing_ids: np.ndarray
    sample_ids: np.ndarray = None


class _Rows:
    """Output buffers of ``count`` rows being decoded."""

    def __init__(self, count, dim, patches):
        self.X = np.empty((count, dim), dtype=np.float32)
        self.ids = np.empty((count, 12), dtype=np.uint8)
        self.sample_ids = np.empty((count if patches else 0, 12), dtype=np.uint8)
        self.status = np.full(count, _UNSEEN, dtype=np.uint8)
        self.nonfinite = 0
        self.lock = threading.Lock()


def _compact(X, keep):
    """Moves the rows of ``X`` flagged in ``keep`` to its front, in order, in
    place (a block at a time); returns their count."""
    m, block = 0, 1 << 14
    for s in range(0, len(keep), block):
        rows = np.flatnonzero(keep[s : s + block]) + s
        if len(rows) and rows[-1] != m + len(rows) - 1:  # not already in place
            X[m : m + len(rows)] = X[rows]
        m += len(rows)
    return m


class VectorReader:
    """The vectors of ``field`` in ``samples`` (a dataset or view; in a patches
    view an attribute of its labels such as ``ground_truth.embedding``), read
    in bulk: :meth:`read` (all rows, or a subset) and :meth:`chunks` (all rows,
    a bounded chunk at a time). ``field=None`` reads only the ids.

    ``count`` is the number of rows (samples or patches) of ``samples`` and
    ``dim`` the vectors' length (from the first value; ``ValueError`` if none).
    """

    #: the rows it returns are fresh arrays, which their user may modify
    in_place = True

    def __init__(self, samples, field):
        self.samples = samples
        self.field = field
        self.patches = bool(getattr(samples, "_is_patches", False))
        self._collection = samples._dataset._sample_collection
        project = {"_id": True}
        if self.patches:
            project["s"] = "$_sample_id"
        if field is not None:
            cf.validate_embeddings_field(samples, field)
            self._field = samples.get_field(field)
            project["v"] = "$" + field
        self._pipeline = samples._pipeline(pipeline=[{"$project": project}])
        self.count = len(samples)
        self.dim = 0 if field is None else self._first_dim()
        table, lengths = K.npy_headers(self.dim)
        itemsizes = np.array([np.dtype(t).itemsize for t in K.DTYPES], dtype=np.int64)
        self._headers = (table, lengths, itemsizes)
        self._scratch_bytes = int(lengths.max()) + 8 * self.dim + 64

    def _first_dim(self):
        first = list(
            self._collection.aggregate(
                self._pipeline + [{"$match": {"v": {"$ne": None}}}, {"$limit": 1}], allowDiskUse=True
            )
        )
        if not first:
            raise ValueError(f"No sample of this collection has a value in '{self.field}'")
        return int(np.asarray(self._field.to_python(first[0]["v"])).size)

    @property
    def description(self):
        return f"embeddings in '{self.field}'"

    def _batches(self):
        """(raw batch, document starts, position of its first document)."""
        first = 0
        batches = _reply_batches if K.AVAILABLE else _raw_batches
        for buf, starts in batches(self._collection, self._pipeline):
            yield buf, starts, first
            first += len(starts)

    # decoding ----------------------------------------------------------------

    def _decode(self, buf, starts, dest, rows):
        """Decodes documents ``starts`` of ``buf`` into ``rows`` (``dest[i]``:
        the row of document ``i``, or -1)."""
        nonfinite = 0
        if K.AVAILABLE:
            table, lengths, itemsizes = self._headers
            scratch = np.empty(self._scratch_bytes, dtype=np.uint8)
            with K.Inflater() as state:
                nonfinite = K.decode_vectors(
                    state, buf, starts, dest, rows.X, rows.ids, rows.sample_ids, rows.status,
                    table, lengths, itemsizes, scratch,
                )
            flagged = np.flatnonzero((dest >= 0) & (rows.status[np.maximum(dest, 0)] == K.PYTHON))
        else:
            flagged = np.flatnonzero(dest >= 0)
        if len(flagged):
            nonfinite += self._decode_python(buf, starts, dest, rows, flagged)
        if nonfinite:
            with rows.lock:
                rows.nonfinite += nonfinite

    def _decode_python(self, buf, starts, dest, rows, which):
        """The Python decoder, through the field's own ``to_python``."""
        import bson

        nonfinite = 0
        for i in which:
            start = int(starts[i])
            size = int.from_bytes(buf[start : start + 4].tobytes(), "little")
            doc = bson.decode(buf[start : start + size].tobytes())
            row = dest[i]
            rows.ids[row] = np.frombuffer(doc["_id"].binary, dtype=np.uint8)
            if self.patches:
                rows.sample_ids[row] = np.frombuffer(doc["s"].binary, dtype=np.uint8)
            value = doc.get("v")
            if value is None or not self.dim:
                rows.status[row] = K.MISSING
                continue
            try:
                vector = np.asarray(self._field.to_python(value), dtype=np.float32).ravel()
            except (TypeError, ValueError) as e:
                raise ValueError(f"A value of '{self.field}' is not a vector of numbers ({e})") from e
            if vector.size != self.dim:
                raise ValueError(cf.mismatched_dimensions_message(self.description, [self.dim, vector.size]))
            rows.X[row] = vector
            rows.status[row] = K.DECODED
            nonfinite += not np.isfinite(rows.X[row]).all()
        return nonfinite

    def _finish(self, rows, count):
        """The decoded rows as :class:`Vectors` (rows without a value moved out
        of ``X`` in place)."""
        status = rows.status[:count]
        seen = status != _UNSEEN
        present = status == K.DECODED if self.dim else seen
        if rows.nonfinite:
            raise ValueError(cf.nonfinite_message(rows.nonfinite, int(present.sum()), self.description))
        m = count if present.all() else _compact(rows.X[:count], present)
        return Vectors(
            ids=rows.ids[:count][present],
            X=rows.X[:m],
            missing_ids=rows.ids[:count][seen & ~present],
            sample_ids=rows.sample_ids[:count][present] if self.patches else None,
        )

    # public ------------------------------------------------------------------

    def read(self, positions=None, progress=None):
        """:class:`Vectors` of every row, or of the rows at the sorted
        ``positions`` (0-based, in the collection's order) only."""
        size = self.count if positions is None else len(positions)
        rows = _Rows(size, self.dim, self.patches)
        with _Pool(progress, self.count) as pool:
            for buf, starts, first in self._batches():
                last = first + len(starts)
                if positions is None:
                    if last > size:
                        raise RuntimeError("The collection grew while it was read; try again")
                    dest = np.arange(first, last, dtype=np.int64)
                else:
                    lo, hi = np.searchsorted(positions, [first, last])
                    dest = np.full(len(starts), -1, dtype=np.int64)
                    dest[positions[lo:hi] - first] = np.arange(lo, hi)
                pool.submit(self._decode, buf, starts, dest, rows, done=len(starts))
        return self._finish(rows, size)

    def chunks(self, chunk_rows, progress=None):
        """Yields :class:`Vectors` of consecutive rows, ``chunk_rows`` at a time."""
        rows, filled = None, 0
        with _Pool(progress, self.count) as pool:
            for buf, starts, _ in self._batches():
                i = 0
                while i < len(starts):
                    if rows is None:
                        rows, filled = _Rows(chunk_rows, self.dim, self.patches), 0
                    take = min(len(starts) - i, chunk_rows - filled)
                    dest = np.arange(filled, filled + take, dtype=np.int64)
                    pool.submit(self._decode, buf, starts[i : i + take], dest, rows, done=take)
                    filled += take
                    i += take
                    if filled == chunk_rows:
                        pool.wait()
                        yield self._finish(rows, filled)
                        rows = None
            if rows is not None:
                pool.wait()
                yield self._finish(rows, filled)


def _reply_batches(collection, pipeline):
    """``(bytes, document starts)`` of each batch of an aggregation: the
    server's replies, located and indexed by a kernel (pymongo's raw batches
    make a Python object per document on the way)."""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    database = collection.database
    options = CodecOptions(document_class=RawBSONDocument)
    command = {
        "aggregate": collection.name, "pipeline": pipeline, "allowDiskUse": True,
        "cursor": {"batchSize": _FETCH_BATCH},
    }
    cursor_id = 0
    with database.client.start_session() as session:  # a cursor's getMores must share its session
        try:
            while True:
                buf = np.frombuffer(database.command(command, codec_options=options, session=session).raw, np.uint8)
                cursor_id, starts = K.batch_documents(buf)
                if cursor_id < 0:
                    raise RuntimeError("Unexpected reply to an aggregation from the database")
                yield buf, starts
                if cursor_id == 0:
                    return
                command = {"getMore": cursor_id, "collection": collection.name, "batchSize": _FETCH_BATCH}
        finally:
            if cursor_id > 0:  # stopped early: free the server's cursor
                database.command({"killCursors": collection.name, "cursors": [cursor_id]}, session=session)


def _raw_batches(collection, pipeline):
    """``(bytes, document starts)`` of each of pymongo's raw batches (used
    without the kernels)."""
    with collection.aggregate_raw_batches(pipeline, allowDiskUse=True, batchSize=_FETCH_BATCH) as cursor:
        for batch in cursor:
            starts, pos = [], 0
            while pos < len(batch):
                starts.append(pos)
                pos += int.from_bytes(batch[pos : pos + 4], "little")
            yield np.frombuffer(batch, dtype=np.uint8), np.asarray(starts, dtype=np.int64)


class _Pool:
    """Decoding tasks on a few threads (the kernels release the GIL), a bounded
    number in flight; reports ``reading n/N``."""

    def __init__(self, progress, total):
        self.threads = max(1, usable_cpus())
        self.progress = progress
        self.total = total
        self.done = 0
        self._pending = deque()

    def __enter__(self):
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="imgclust-decode")
        return self

    def submit(self, fn, *args, done):
        while len(self._pending) >= 2 * self.threads:
            self._collect(self._pending.popleft())
        self._pending.append((self._executor.submit(fn, *args), done))

    def _collect(self, item):
        future, done = item
        future.result()
        self.done += done
        if self.progress is not None and self.total:
            self.progress(min(1.0, self.done / self.total), f"reading {self.done}/{self.total}")

    def wait(self):
        while self._pending:
            self._collect(self._pending.popleft())

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.wait()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)
        return False


def read_embeddings(samples, field, progress=None):
    """``(ids, X, missing_ids)``: the ids of the samples of ``samples`` whose
    ``field`` is set (label ids for a field of patches), their vectors as a
    float32 ``(n, d)`` matrix, and the ids of those without a value."""
    vectors = VectorReader(samples, field).read(progress=progress)
    return id_strings(vectors.ids), vectors.X, id_strings(vectors.missing_ids)


def read_ids(samples, progress=None):
    """``(ids, sample_ids)``: the ``(n, 12)`` ids of ``samples`` in order, and
    for a patches view the ids of the samples holding its labels (else None)."""
    vectors = VectorReader(samples, None).read(progress=progress)
    return vectors.ids, vectors.sample_ids


# ---------------------------------------------------------------------------
# writing


class _Column:
    """The values of one written path, aligned with the written ids, turned
    into BSON-ready values a chunk at a time: a numeric numpy array (masked
    entries are skipped) or a sequence of Python values (None clears; ``SKIP``
    leaves the stored value)."""

    def __init__(self, path, field, values, count):
        import fiftyone as fo

        self.path = path
        self.field = field
        self._cast = None
        if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biuf":
            kind = values.dtype.kind
            if isinstance(field, fo.FloatField) and kind in "biuf":
                self._cast = np.float64
            elif isinstance(field, fo.IntField) and kind in "biu":
                self._cast = np.int64
            elif isinstance(field, fo.BooleanField) and kind == "b":
                self._cast = np.bool_
        if self._cast is not None:
            self._mask = np.ma.getmaskarray(values)
            self._values = np.ma.getdata(values)
        else:
            self._values = values
        if len(values) != count:
            raise ValueError(f"'{path}' has {len(values)} values for {count} ids")

    @property
    def numeric(self):
        """Whether the values are a numeric array (see :meth:`arrays`)."""
        return self._cast is not None

    def arrays(self, index):
        """``(values, skipped)`` at ``index`` of a numeric column: the values
        as the field stores them (int64, float64 or bool) and the mask."""
        return self._values[index].astype(self._cast), self._mask[index]

    def take(self, index):
        """BSON-ready values at ``index`` (a slice or an array of rows)."""
        if self.numeric:
            values, skipped = self.arrays(index)
            values = values.tolist()
            for i in np.flatnonzero(skipped):
                values[i] = SKIP
            return values
        picked = self._values[index] if isinstance(index, slice) else [self._values[i] for i in index]
        return [self._serialize(v) for v in picked]

    def _serialize(self, value):
        if value is None or value is SKIP:
            return value
        try:
            self.field.validate(value)
        except Exception as e:
            raise ValueError(f"Invalid value for field '{self.path}'. Reason: {e}") from e
        return self.field.to_mongo(value)


def _declared_fields(dataset, paths):
    fields = {}
    for path in paths:
        field = dataset.get_field(path)
        if field is None:
            raise ValueError(f"Field '{path}' is not declared on dataset '{dataset.name}'; add it first")
        if field.read_only:
            raise ValueError(f"Cannot edit read-only field '{path}'")
        fields[path] = field
    return fields


def _sample_statements(ids, columns, start, stop, now):
    """Encoded ``update`` statements setting rows ``start:stop`` by sample id."""
    from bson import ObjectId, encode

    if all(c.numeric for c in columns):
        yield from _numeric_statements(ids, columns, start, stop, now)
        return
    chunks = [(c.path, c.take(slice(start, stop))) for c in columns]
    for r in range(stop - start):
        values = {path: values[r] for path, values in chunks if values[r] is not SKIP}
        if values:
            values["last_modified_at"] = now
            yield encode({"q": {"_id": ObjectId(ids[start + r].tobytes())}, "u": {"$set": values}})


# BSON types of numeric values as Python encodes them (the element type byte,
# a value of that type, its numpy dtype), by kind: 1 int32, 2 int64, 3 double, 4 bool
_NUMERIC_KINDS = {1: (0x10, 0, "<i4"), 2: (0x12, 1 << 40, "<i8"), 3: (0x01, 0.0, "<f8"), 4: (0x08, False, "?")}


def _numeric_statements(ids, columns, start, stop, now):
    """The statements of :func:`_sample_statements` for numeric columns, as
    bytes built with numpy: one template per combination of value kinds
    (int32 or int64 as Python ints encode, double, bool, or skipped), filled a
    column at a time."""
    from bson import ObjectId, encode

    kinds = np.zeros(stop - start, dtype=np.int64)
    values = []
    for c in columns:
        v, skipped = c.arrays(slice(start, stop))
        if v.dtype == np.int64:
            kind = np.where((v >= -(1 << 31)) & (v < (1 << 31)), 1, 2)
        else:
            kind = np.full(len(v), 3 if v.dtype == np.float64 else 4)
        kinds = kinds * 5 + np.where(skipped, 0, kind)
        values.append(v)
    for combination in np.unique(kinds):
        rows = np.flatnonzero(kinds == combination)
        per_column = [(combination // 5 ** (len(columns) - 1 - i)) % 5 for i in range(len(columns))]
        present = [(c, v, kind) for c, v, kind in zip(columns, values, per_column) if kind]
        if not present:
            continue
        sample = {c.path: _NUMERIC_KINDS[kind][1] for c, _, kind in present}
        sample["last_modified_at"] = now
        template = encode({"q": {"_id": ObjectId(bytes(12))}, "u": {"$set": sample}})
        out = np.tile(np.frombuffer(template, dtype=np.uint8), (len(rows), 1))
        at = template.index(b"\x07_id\x00") + 5
        out[:, at : at + 12] = ids[start + rows]
        at = template.index(b"\x03$set\x00")
        for c, v, kind in present:  # in the order of the template's elements
            code, _, dtype = _NUMERIC_KINDS[kind]
            key = bytes([code]) + c.path.encode() + b"\x00"
            at = template.index(key, at) + len(key)
            column = np.ascontiguousarray(v[rows].astype(dtype))
            out[:, at : at + column.itemsize] = column.view(np.uint8).reshape(len(rows), -1)
        data, size = out.tobytes(), len(template)
        yield from (data[i : i + size] for i in range(0, len(data), size))


def _label_statements(root, is_list, ids, sample_ids, order, bounds, columns, start, stop, now):
    """Encoded ``update`` statements setting the labels of samples
    ``start:stop`` (in ``order``, grouped by ``bounds``) through array filters
    on label ids."""
    from bson import ObjectId, encode

    lo, hi = bounds[start], bounds[stop]
    rows = order[lo:hi]
    chunks = [(c.path[len(root) + 1 :], c.take(rows)) for c in columns]
    for g in range(start, stop):
        values, filters = {}, []
        for j in range(bounds[g] - lo, bounds[g + 1] - lo):
            row_values = [(leaf, v[j]) for leaf, v in chunks if v[j] is not SKIP]
            if not row_values:
                continue
            label_id = ObjectId(ids[rows[j]].tobytes())
            if is_list:
                name = f"l{len(filters)}"
                filters.append({f"{name}._id": label_id})
                values.update({f"{root}.$[{name}].{leaf}": v for leaf, v in row_values})
            else:
                filters.append(label_id)
                values.update({f"{root}.{leaf}": v for leaf, v in row_values})
        if not values:
            continue
        values["last_modified_at"] = now
        query = {"_id": ObjectId(sample_ids[rows[bounds[g] - lo]].tobytes())}
        statement = {"q": query, "u": {"$set": values}}
        if is_list:
            statement["arrayFilters"] = filters
        else:
            query[f"{root}._id"] = filters[0]
        yield encode(statement)


class _Sender:
    """Sends ``update`` commands on two threads (the server applies them in
    parallel) and raises the first write error."""

    def __init__(self, collection):
        self.collection = collection
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="imgclust-write")
        self._pending = deque()

    def send(self, statements):
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._executor.submit(_update, self.collection, statements))

    def close(self, ok=True):
        try:
            while ok and self._pending:
                self._pending.popleft().result()
        finally:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _update(collection, statements):
    """One unordered ``update`` command; the first write error as ValueError."""
    reply = collection.database.command(
        {"update": collection.name, "updates": statements, "ordered": False}
    )
    errors = reply.get("writeErrors") or ([reply["writeConcernError"]] if "writeConcernError" in reply else [])
    if errors:
        raise ValueError(errors[0].get("errmsg", str(errors[0])))


def _reload_in_memory(dataset, sample_ids):
    """Reloads the in-memory ``Sample`` objects among ``sample_ids`` (as
    FiftyOne's own writes do), so none serves a stale value."""
    import fiftyone.core.sample as fos

    instances = fos.Sample._instances.get(dataset._sample_collection_name)
    if not instances:
        return
    loaded = list(instances.keys())
    written = np.isin(id_keys(id_array(loaded)), id_keys(sample_ids))
    fos.Sample._reload_docs(
        dataset._sample_collection_name, sample_ids=[i for i, w in zip(loaded, written) if w]
    )


def write_columns(dataset, ids, columns, patches_field=None, sample_ids=None, progress=None):
    """Writes ``columns`` ({path: values aligned with ``ids``}) on ``dataset``
    in one pass: by sample id, or with ``patches_field`` on the labels of that
    field by label id (``sample_ids``: the samples holding them, looked up when
    not given). ``values`` is a numeric numpy array (masked entries are left
    as they are) or a sequence of values (None clears, :data:`SKIP` leaves).
    The paths must be declared fields; nothing but them and
    ``last_modified_at`` of the written documents is touched.
    ``progress(fraction, message)`` hears ``writing n/N``."""
    ids = id_array(ids)
    count = len(ids)
    fields = _declared_fields(dataset, columns)
    cols = [_Column(path, fields[path], values, count) for path, values in columns.items()]
    if not count or not cols:
        return
    now = datetime.utcnow()
    collection = dataset._sample_collection
    if patches_field:
        root, is_list = dataset._get_label_field_root(patches_field)
        for c in cols:
            if not c.path.startswith(root + "."):
                raise ValueError(f"'{c.path}' is not an attribute of the labels of '{patches_field}'")
        sample_ids = id_array(sample_ids) if sample_ids is not None else _samples_of_labels(dataset, patches_field, ids)
        order = np.argsort(id_keys(sample_ids), kind="stable")
        keys = id_keys(sample_ids)[order]
        bounds = np.concatenate([[0], np.flatnonzero(keys[1:] != keys[:-1]) + 1, [count]])
        units = len(bounds) - 1

        def statements(s, e):
            return _label_statements(root, is_list, ids, sample_ids, order, bounds, cols, s, e, now)

        written = np.unique(sample_ids, axis=0)
    else:
        units = count

        def statements(s, e):
            return _sample_statements(ids, cols, s, e, now)

        written = ids
    _send_all(collection, statements, units, progress)
    _reload_in_memory(dataset, written)


def _send_all(collection, statements, units, progress):
    from bson.raw_bson import RawBSONDocument

    sender = _Sender(collection)
    ok = False
    try:
        batch, size = [], 0
        for s in range(0, units, _WRITE_CHUNK):
            e = min(units, s + _WRITE_CHUNK)
            for statement in statements(s, e):
                batch.append(RawBSONDocument(statement))
                size += len(statement)
                if size >= _WRITE_BYTES or len(batch) >= _WRITE_DOCS:
                    sender.send(batch)
                    batch, size = [], 0
            if progress is not None:
                progress(e / units, f"writing {e}/{units}")
        if batch:
            sender.send(batch)
        ok = True
    finally:
        sender.close(ok)


def _samples_of_labels(dataset, patches_field, label_ids):
    """The ids of the samples holding the labels ``label_ids`` of ``patches_field``."""
    strings = id_strings(label_ids)
    try:
        return id_array(dataset._get_sample_ids_for_labels(patches_field, strings))
    except KeyError as e:
        raise ValueError(f"No label of '{patches_field}' has id {e.args[0]}") from None


def write_fields(dataset, columns, patches_field=None, progress=None):
    """Writes ``columns`` ({path: {id: value}}) on ``dataset``: by sample id, or
    by label id when the paths are attributes of the labels of ``patches_field``
    (a value of None clears it). Fields that do not exist yet are declared
    from their values, as ``set_values`` does. Nothing but these paths and ids
    is touched."""
    columns = {path: values for path, values in columns.items() if values}
    if not columns:
        return
    rows = {}
    for values in columns.values():
        for i in values:
            rows.setdefault(i, len(rows))
    ids = list(rows)
    aligned = {}
    for path, values in columns.items():
        if not dataset.has_field(path):
            dataset._expand_schema_from_values(path, list(values.values()), flat=bool(patches_field))
        column = [SKIP] * len(ids)
        for i, v in values.items():
            column[rows[i]] = v
        aligned[path] = column
    write_columns(dataset, ids, aligned, patches_field=patches_field, progress=progress)


class BatchWriter:
    """Collects rows ``{path: value}`` by id and writes them with
    :func:`write_columns` every ``flush_every`` rows and on :meth:`flush`."""

    def __init__(self, dataset, patches_field=None, flush_every=256):
        self.dataset = dataset
        self.patches_field = patches_field
        self.flush_every = flush_every
        self._ids, self._sample_ids, self._columns = [], [], {}

    def add(self, ids, columns, sample_ids=None):
        """Adds rows: ``ids`` and, per path, their values (None clears)."""
        start = len(self._ids)
        self._ids.extend(ids)
        if sample_ids is not None:
            self._sample_ids.extend(sample_ids)
        for path in set(self._columns) | set(columns):
            column = self._columns.setdefault(path, [SKIP] * start)
            column.extend(columns.get(path, [SKIP] * len(ids)))
        if len(self._ids) >= self.flush_every:
            self.flush()

    def flush(self):
        if not self._ids:
            return
        ids, sample_ids, columns = self._ids, self._sample_ids, self._columns
        self._ids, self._sample_ids, self._columns = [], [], {}
        write_columns(
            self.dataset, ids, columns, patches_field=self.patches_field,
            sample_ids=sample_ids if self.patches_field else None,
        )
