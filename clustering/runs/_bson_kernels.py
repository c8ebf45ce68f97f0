"""numba kernels that decode raw BSON batches of embeddings without Python
objects per document.

A batch is the bytes of consecutive documents ``{_id, s?, v?}`` as returned by
``aggregate_raw_batches`` (see :mod:`clustering.runs.storage`): ``_id`` the row's id,
``s`` (patches) the id of the sample holding the label, ``v`` its vector. A
vector is FiftyOne's zlib-compressed ``numpy.save`` bytes (``VectorField``,
``ArrayField``), inflated from the kernel, or a BSON array of numbers
(``ListField``). Documents the kernel cannot decode exactly (an unusual dtype
or shape, a non-numeric list) are flagged for the Python decoder, so the result
is always that of FiftyOne's ``values()``.

Inflating is most of the work: the kernel calls libdeflate's zlib decoder
where the system has that library (``libdeflate.so.0``: 1.6x zlib's speed on
embeddings), else zlib's own ``uncompress``. Either is bound at import to the
symbol ``imgclust_inflate`` (libdeflate's signature), which the compiled
kernels call by name, so they stay cached on disk whichever is used.

The kernels release the GIL, so batches decode on several threads while the
next ones are fetched. They are unavailable (``AVAILABLE`` is False) without
numba, with ``CLUSTERING_DISABLE_NUMBA`` set, or where neither library can be
loaded; the Python decoder then does all the work.
"""

import ctypes.util
import os

import numpy as np

try:
    import llvmlite.binding as _llvm
    import numba
    from numba import njit, types
except ImportError:  # pragma: no cover - torch-only installs
    numba = None

# status of a row after decoding
MISSING, DECODED, PYTHON = 0, 1, 2
# dtypes of numpy.save headers decoded by the kernel (code = index)
DTYPES = ("<f4", "<f8", "<i8", "<i4")



def _inflate_signature():
    """libdeflate_zlib_decompress's signature: state, source, source bytes,
    destination, its capacity, bytes written; returns 0 on success."""
    return types.int32(types.voidptr, types.voidptr, types.uint64, types.voidptr, types.uint64, types.voidptr)


def _library(name, symbol):
    """``ctypes`` handle of the shared library ``name`` if it exports ``symbol``."""
    path = ctypes.util.find_library(name)
    if path is None:
        return None
    try:
        library = ctypes.CDLL(path)
        getattr(library, symbol)
        return library
    except (OSError, AttributeError):
        return None


def _bind_inflate():
    """Binds ``imgclust_inflate`` to libdeflate or zlib (``CLUSTERING_INFLATE``
    = ``libdeflate`` or ``zlib`` picks one; default: libdeflate if present);
    the name of the one used and, for libdeflate, its ``ctypes`` handle (for
    per-thread decompressors)."""
    if numba is None or os.environ.get("CLUSTERING_DISABLE_NUMBA"):
        return None, None
    choice = os.environ.get("CLUSTERING_INFLATE", "").lower()
    libdeflate = _library("deflate", "libdeflate_zlib_decompress") if choice != "zlib" else None
    if libdeflate is not None:
        libdeflate.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
        libdeflate.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
        address = ctypes.cast(libdeflate.libdeflate_zlib_decompress, ctypes.c_void_p).value
        _llvm.add_symbol("imgclust_inflate", address)
        return "libdeflate", libdeflate
    if choice == "libdeflate" or _library("z", "uncompress") is None:
        return None, None
    _llvm.load_library_permanently(ctypes.util.find_library("z"))
    _llvm.add_symbol("imgclust_inflate", _zlib_inflate().address)
    return "zlib", None


def _zlib_inflate():
    """zlib's ``uncompress`` behind the inflate signature (a compiled C callback)."""
    uncompress = types.ExternalFunction(
        "uncompress", types.int32(types.voidptr, types.voidptr, types.voidptr, types.uint64)
    )

    @numba.cfunc(_inflate_signature(), cache=True)
    def inflate(state, source, size, destination, capacity, written):  # noqa: ARG001 (no state)
        return uncompress(destination, written, source, size)

    return inflate


INFLATE, _libdeflate = _bind_inflate()
AVAILABLE = INFLATE is not None
if AVAILABLE:
    _inflate = types.ExternalFunction("imgclust_inflate", _inflate_signature())


class Inflater:
    """The state the inflate function needs on one thread (libdeflate's
    decompressor; nothing for zlib): ``with Inflater() as state: ...``."""

    def __enter__(self):
        self.state = _libdeflate.libdeflate_alloc_decompressor() if _libdeflate is not None else 0
        if self.state is None:
            raise MemoryError("libdeflate could not allocate a decompressor")
        return self.state

    def __exit__(self, *exc):
        if _libdeflate is not None:
            _libdeflate.libdeflate_free_decompressor(self.state)
        return False


# element names the kernels look for (small arrays: compiled in as constants)
_CURSOR, _FIRST_BATCH, _NEXT_BATCH, _ID, _OBJECT_ID, _SAMPLE_ID, _VECTOR = (
    np.frombuffer(name, dtype=np.uint8) for name in (b"cursor", b"firstBatch", b"nextBatch", b"id", b"_id", b"s", b"v")
)


def npy_headers(dim):
    """(headers, lengths): the ``numpy.save`` header of a ``(dim,)`` array of
    each dtype of ``DTYPES``, one padded row each (the kernel's table)."""
    import io

    rows = []
    for dtype in DTYPES:
        with io.BytesIO() as f:
            np.save(f, np.zeros(dim, dtype=dtype), allow_pickle=False)
            data = f.getvalue()
        rows.append(data[: len(data) - dim * np.dtype(dtype).itemsize])
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    table = np.zeros((len(rows), lengths.max()), dtype=np.uint8)
    for i, r in enumerate(rows):
        table[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
    return table, lengths


if AVAILABLE:

    @njit(nogil=True, cache=True)
    def _int32(buf, p):
        return np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16) | (
            np.int64(np.int8(buf[p + 3])) << 24
        )

    @njit(nogil=True, cache=True)
    def _skip(buf, t, p):
        """Offset after the value of BSON type ``t`` at ``p`` (-1: a type a
        cursor reply does not hold)."""
        if t == 1 or t == 9 or t == 17 or t == 18:
            return p + 8
        if t == 2:
            return p + 4 + _int32(buf, p)
        if t == 3 or t == 4:
            return p + _int32(buf, p)
        if t == 5:
            return p + 5 + _int32(buf, p)
        if t == 7:
            return p + 12
        if t == 8:
            return p + 1
        if t == 10:
            return p
        if t == 16:
            return p + 4
        if t == 19:
            return p + 16
        return -1

    @njit(nogil=True, cache=True)
    def _after_name(buf, p):
        """Offset after the NUL-terminated element name that starts at ``p``."""
        while buf[p] != 0:
            p += 1
        return p + 1

    @njit(nogil=True, cache=True)
    def _name_is(buf, p, name):
        for j in range(len(name)):
            if buf[p + j] != name[j]:
                return False
        return buf[p + len(name)] == 0

    @njit(nogil=True, cache=True)
    def batch_documents(buf):
        """``(cursor id, document starts)`` of an aggregate or getMore reply:
        ``{cursor: {id, firstBatch | nextBatch: [documents]}, ...}``;
        cursor id -1 when the reply does not have that shape."""
        cursor_id = np.int64(-1)
        lo, hi = np.int64(-1), np.int64(-1)
        end = _int32(buf, 0) - 1
        p = 4
        while p < end:
            t = buf[p]
            name = p + 1
            p = _after_name(buf, name)
            if t == 3 and _name_is(buf, name, _CURSOR):
                inner_end = p + _int32(buf, p) - 1
                q = p + 4
                while q < inner_end:
                    ti = buf[q]
                    inner_name = q + 1
                    q = _after_name(buf, inner_name)
                    if ti == 4 and (_name_is(buf, inner_name, _FIRST_BATCH) or _name_is(buf, inner_name, _NEXT_BATCH)):
                        lo, hi = q + 4, q + _int32(buf, q) - 1
                    elif ti == 18 and _name_is(buf, inner_name, _ID):
                        cursor_id = buf[q : q + 8].view(np.int64)[0]
                    q = _skip(buf, ti, q)
                    if q < 0:
                        return np.int64(-1), np.empty(0, dtype=np.int64)
            p = _skip(buf, t, p)
            if p < 0:
                return np.int64(-1), np.empty(0, dtype=np.int64)
        if lo < 0:
            return np.int64(-1), np.empty(0, dtype=np.int64)
        count = 0
        q = lo
        while q < hi:  # array elements: type, index key, document
            q = _after_name(buf, q + 1)
            count += 1
            q += _int32(buf, q)
        starts = np.empty(count, dtype=np.int64)
        q = lo
        for i in range(count):
            q = _after_name(buf, q + 1)
            starts[i] = q
            q += _int32(buf, q)
        return cursor_id, starts

    @njit(nogil=True, cache=True)
    def _finite_row(X, row):
        for j in range(X.shape[1]):
            v = X[row, j]
            if v != v or v == np.inf or v == -np.inf:
                return False
        return True

    @njit(nogil=True, cache=True)
    def _copy_npy(raw, offset, code, X, row):
        d = X.shape[1]
        if code == 0:
            src = raw[offset : offset + 4 * d].view(np.float32)
            for j in range(d):
                X[row, j] = src[j]
        elif code == 1:
            src64 = raw[offset : offset + 8 * d].view(np.float64)
            for j in range(d):
                X[row, j] = np.float32(src64[j])
        elif code == 2:
            srci64 = raw[offset : offset + 8 * d].view(np.int64)
            for j in range(d):
                X[row, j] = np.float32(srci64[j])
        else:
            srci32 = raw[offset : offset + 4 * d].view(np.int32)
            for j in range(d):
                X[row, j] = np.float32(srci32[j])

    @njit(nogil=True, cache=True)
    def _decode_binary(state, buf, p, length, X, row, headers, header_lengths, itemsizes, scratch, out_length):
        """Inflates FiftyOne's array bytes at ``buf[p:p + length]`` into
        ``X[row]``; False when they are not a ``(d,)`` array of a known dtype."""
        d = X.shape[1]
        out_length[0] = len(scratch)  # zlib reads the capacity from here
        rc = _inflate(state, buf[p:].ctypes.data, length, scratch.ctypes.data, len(scratch), out_length.ctypes.data)
        if rc != 0:
            return False
        size = np.int64(out_length[0])
        for code in range(len(header_lengths)):
            hl = header_lengths[code]
            if size != hl + itemsizes[code] * d:
                continue
            same = True
            for j in range(hl):
                if scratch[j] != headers[code, j]:
                    same = False
                    break
            if same:
                _copy_npy(scratch, hl, code, X, row)
                return True
        return False

    @njit(nogil=True, cache=True)
    def _decode_list(buf, p, X, row):
        """A BSON array of numbers at ``p`` into ``X[row]`` (as numpy converts
        Python floats and ints); False unless it holds exactly d numbers."""
        d = X.shape[1]
        end = p + _int32(buf, p) - 1
        q = p + 4
        j = 0
        while q < end:
            t = buf[q]
            q = _after_name(buf, q + 1)  # the index key
            if j >= d:
                return False
            if t == 1:
                X[row, j] = np.float32(buf[q : q + 8].view(np.float64)[0])
                q += 8
            elif t == 16:
                X[row, j] = np.float32(np.float64(_int32(buf, q)))
                q += 4
            elif t == 18:
                X[row, j] = np.float32(np.float64(buf[q : q + 8].view(np.int64)[0]))
                q += 8
            else:
                return False
            j += 1
        return j == d

    @njit(nogil=True, cache=True)
    def decode_vectors(state, buf, starts, dest, X, ids, sample_ids, status, headers, header_lengths, itemsizes,
                       scratch):
        """Decodes document ``i`` of ``buf`` into row ``dest[i]`` of ``X``, ``ids``
        (12 id bytes), ``sample_ids`` (patches; may have no rows) and ``status``
        (``DECODED``, ``MISSING`` or ``PYTHON``); ``dest[i] < 0`` skips it.
        ``state``: this thread's :class:`Inflater`. Returns the number of
        decoded rows with NaN or infinite values."""
        out_length = np.zeros(1, dtype=np.uint64)
        nonfinite = 0
        for i in range(len(starts)):
            row = dest[i]
            if row < 0:
                continue
            pos = starts[i]
            end = pos + _int32(buf, pos) - 1
            p = pos + 4
            outcome = MISSING
            while p < end and outcome != PYTHON:
                t = buf[p]
                name = p + 1
                p = _after_name(buf, name)
                if t == 7:  # an ObjectId: _id or s
                    if _name_is(buf, name, _OBJECT_ID):
                        for j in range(12):
                            ids[row, j] = buf[p + j]
                    elif len(sample_ids) and _name_is(buf, name, _SAMPLE_ID):
                        for j in range(12):
                            sample_ids[row, j] = buf[p + j]
                    p += 12
                elif t == 10:  # null
                    pass
                elif not _name_is(buf, name, _VECTOR):
                    outcome = PYTHON
                elif t == 5:
                    length = _int32(buf, p)
                    ok = _decode_binary(
                        state, buf, p + 5, length, X, row, headers, header_lengths, itemsizes, scratch, out_length
                    )
                    outcome = DECODED if ok else PYTHON
                    p += 5 + length
                elif t == 4:
                    outcome = DECODED if _decode_list(buf, p, X, row) else PYTHON
                    p += _int32(buf, p)
                else:
                    outcome = PYTHON
            status[row] = outcome
            if outcome == DECODED and not _finite_row(X, row):
                nonfinite += 1
        return nonfinite


def warm_up():
    """Compiles (or loads from the disk cache) the kernels, with the argument
    types :mod:`clustering.runs.storage` passes, on a tiny batch of every kind of
    value."""
    if not AVAILABLE:
        return
    import io
    import zlib

    import bson

    dim = 4
    values = []
    for dtype in ("<f4", "<f8"):
        with io.BytesIO() as f:
            np.save(f, np.arange(dim, dtype=dtype))
            values.append(bson.Binary(zlib.compress(f.getvalue())))
    values += [[0.5] * dim, None]
    reply = {"cursor": {"id": bson.Int64(0), "ns": "db.c", "firstBatch": [{"_id": bson.ObjectId(), "v": v} for v in values]}, "ok": 1.0}
    buf = np.frombuffer(bson.encode(reply), dtype=np.uint8)
    _, starts = batch_documents(buf)
    count = len(values)
    table, lengths = npy_headers(dim)
    itemsizes = np.array([np.dtype(t).itemsize for t in DTYPES], dtype=np.int64)
    with Inflater() as state:
        decode_vectors(
            state, buf, starts, np.arange(count, dtype=np.int64), np.empty((count, dim), np.float32),
            np.empty((count, 12), np.uint8), np.empty((0, 12), np.uint8), np.empty(count, np.uint8),
            table, lengths, itemsizes, np.empty(256, np.uint8),
        )
