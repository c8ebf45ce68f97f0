"""Low-level kernels of the clustering engine.

Every public function takes and returns torch tensors and works on any device.
On CPU, when numba is importable, the memory-bound passes (coordinate-wise
pairwise losses, per-cluster sums, per-coordinate M-estimates, medians) run as
fused, parallel numba kernels; on CUDA the coordinate-wise loss matrix and
assignment are fused triton kernels (when triton is importable, float32);
everything else is chunked torch code that never forms an (n, k, d) tensor.
Set ``CLUSTERING_DISABLE_NUMBA=1`` (or ``NUMBA_ENABLED = False``) to force the
torch path on CPU.

numba's OpenMP pool and torch's are separate runtimes; with the default
(spinning) wait policy each one's idle threads steal the two pools' cores from
the other and every switch between a torch GEMM and a numba kernel costs
milliseconds. Importing this module therefore defaults ``OMP_WAIT_POLICY`` to
``PASSIVE`` (an explicit user setting wins); it takes effect for every OpenMP
runtime loaded afterwards (numba's loads on its first parallel kernel).
The GEMM of the euclidean assignment avoids both pools: its blocks run on a
small pool of Python threads, each a single-threaded BLAS call and a GIL-free
numba scan (``sqeuclidean_nearest``).
"""

import contextlib
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised on torch-only installs
    numba = None

try:  # fused coordinate-wise assignment on CUDA (bundled with torch's CUDA wheels)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

NUMBA_ENABLED = numba is not None and not os.environ.get("CLUSTERING_DISABLE_NUMBA")

# coordinate-wise kinds: loss(x, c) = sum_t rho(x_t - c_t)
ABS, HUBER, PSEUDO_HUBER, SQUARED = 0, 1, 2, 3
_PSEUDO_HUBER_RANK = 4  # cheaper pseudo-Huber form for ranking centers (assignment)
#: coordinate-wise assignment puts samples along the vector lanes up to this d
#: (_coord_assign_lanes_body), centers above it (_coord_assign_body)
_LANES_MAX_D = 32
# radial majorize-minimize kinds (see ``radial_stats``)
CORRENTROPY, GEOMETRIC_MEDIAN = 1, 2

# Newton for M-estimates sums only over the unfinished (cluster, column) roots
# once fewer than this fraction remain
_SPARSE_NEWTON = 0.25

# elements of the temporaries of the torch code path (64 MB of float32 on CPU,
# 512 MB on a GPU)
_CPU_BUDGET, _GPU_BUDGET = 1 << 24, 1 << 27


def _budget(tensor):
    return _CPU_BUDGET if tensor.device.type == "cpu" else _GPU_BUDGET


def numba_active(tensor):
    """Whether the numba kernels serve ``tensor`` (CPU and numba available)."""
    return NUMBA_ENABLED and tensor.device.type == "cpu"


def _np(tensor):
    return tensor.detach().contiguous().numpy()


# below this many elementwise operations a numba kernel runs on one thread:
# waking the pool costs more than it saves, and on a busy machine a descheduled
# worker stalls the whole call for a time slice
_SERIAL_WORK = 1 << 18


def _call(kernel, work, *args):
    """Run a numba kernel, single-threaded when ``work`` is small."""
    if work >= _SERIAL_WORK:
        return kernel(*args)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def _n_chunks(n, work):
    """Per-thread accumulator count for a kernel over n rows."""
    return 1 if work < _SERIAL_WORK else max(1, min(numba.get_num_threads(), n))


# --------------------------------------------------------------------------
# numba kernels (CPU)
# --------------------------------------------------------------------------
if numba is not None:
    # no "nnan"/"ninf": the kernels compare against inf
    _FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
    _F1 = np.float32(1.0)
    _FH = np.float32(0.5)

    @njit(fastmath=_FM, error_model="numpy")
    def _rank_term(e, kind, delta, d2):
        """One coordinate's term of the loss (``_PSEUDO_HUBER_RANK``: of its
        ranking form; d2 = delta^2). error_model="numpy": Python's zero-division
        check on the pseudo-Huber division keeps the loops from vectorizing (4.4x
        slower), and its divisor is >= 1.

        The ranking form's sqrt(t) is written t * (1 / sqrt(t)): with "arcp" and
        "afn" LLVM computes 1 / sqrt as a vector reciprocal-square-root estimate
        refined by one Newton step (float32 accuracy), 1.5x faster than the
        square root instruction on the AMD Zen 5 this was tuned on. delta^2
        must be a normal float (the engine checks it)."""
        if kind == ABS:
            return abs(e)
        if kind == HUBER:
            a = abs(e)
            m = min(a, delta)
            return m * (a - _FH * m)
        if kind == PSEUDO_HUBER:
            r2 = e * e
            return r2 / (_F1 + np.sqrt(_F1 + r2 * (_F1 / d2)))
        if kind == _PSEUDO_HUBER_RANK:
            t = d2 + e * e
            return t * (_F1 / np.sqrt(t))
        return e * e

    @njit(inline="always", fastmath=_FM)
    def _pair_sum(x, c, kind, delta):
        acc = delta * np.float32(0.0)
        d2 = delta * delta
        for t in range(x.shape[0]):
            acc += _rank_term(x[t] - c[t], kind, delta, d2)
        return acc

    @njit(inline="always", fastmath=_FM)
    def _pair1(x, c, kind, delta):
        """sum_t rho(x_t - c_t) of one pair; dispatched once per pair, so that
        each kind's loop is branch-free (a runtime kind in the loop is 4x slower)."""
        if kind == ABS:
            return _pair_sum(x, c, ABS, delta)
        if kind == HUBER:
            return _pair_sum(x, c, HUBER, delta)
        if kind == PSEUDO_HUBER:
            return _pair_sum(x, c, PSEUDO_HUBER, delta)
        return _pair_sum(x, c, SQUARED, delta)

    @njit(inline="always", fastmath=_FM)
    def _tile4_sums(X, r0, r1, r2, r3, CT, kind, delta, acc):
        """acc[s, c] += sum_t _rank_term(X[r_s, t] - CT[t, c]), two coordinates
        per pass over the accumulators (the loop is bound by their loads and
        stores). Inlined with a constant ``kind``, so each kind compiles to its
        own branch-free loop."""
        kp = CT.shape[1]
        d = CT.shape[0]
        d2 = delta * delta
        t = 0
        while t + 2 <= d:
            ra = CT[t]
            rb = CT[t + 1]
            a0, a1, a2, a3 = X[r0, t], X[r1, t], X[r2, t], X[r3, t]
            b0, b1, b2, b3 = X[r0, t + 1], X[r1, t + 1], X[r2, t + 1], X[r3, t + 1]
            for c in range(kp):
                va = ra[c]
                vb = rb[c]
                acc[0, c] += _rank_term(a0 - va, kind, delta, d2) + _rank_term(b0 - vb, kind, delta, d2)
                acc[1, c] += _rank_term(a1 - va, kind, delta, d2) + _rank_term(b1 - vb, kind, delta, d2)
                acc[2, c] += _rank_term(a2 - va, kind, delta, d2) + _rank_term(b2 - vb, kind, delta, d2)
                acc[3, c] += _rank_term(a3 - va, kind, delta, d2) + _rank_term(b3 - vb, kind, delta, d2)
            t += 2
        if t < d:
            row = CT[t]
            x0, x1, x2, x3 = X[r0, t], X[r1, t], X[r2, t], X[r3, t]
            for c in range(kp):
                v = row[c]
                acc[0, c] += _rank_term(x0 - v, kind, delta, d2)
                acc[1, c] += _rank_term(x1 - v, kind, delta, d2)
                acc[2, c] += _rank_term(x2 - v, kind, delta, d2)
                acc[3, c] += _rank_term(x3 - v, kind, delta, d2)

    @njit(inline="always", fastmath=_FM)
    def _tile4(X, r0, r1, r2, r3, CT, kind, delta, acc):
        """acc[s, c] = sum_t rho(X[r_s, t] - CT[t, c]) for 4 samples at once.

        CT is C transposed (d, kp): the center index is the contiguous, vectorized
        one and every loaded center coordinate serves the 4 samples.
        ``_PSEUDO_HUBER_RANK`` ranks by sum_t sqrt(delta^2 + r_t^2) (one square
        root, no division), converted to the loss at the end: accurate to
        ~eps * d * delta^2, fine for ranking centers."""
        acc[:, :] = delta * np.float32(0.0)
        _tile4_sums(X, r0, r1, r2, r3, CT, kind, delta, acc)
        if kind == _PSEUDO_HUBER_RANK:
            base = CT.shape[0] * delta * delta
            for s in range(4):
                for c in range(CT.shape[1]):
                    acc[s, c] = delta * acc[s, c] - base

    @njit(inline="always", fastmath=_FM)
    def _coord_assign_body(X, CT, k, rows, kind, delta, nchunks, labels, best, second, bounds):
        """Best / second-best loss over the first k columns of CT (C transposed,
        (d, kp)); with a non-empty ``bounds`` (n, k) also every loss of the
        sample rows[q] in bounds[rows[q]]. Compiled once per kind (``_COORD_ASSIGN``)."""
        m = rows.shape[0]
        blocks = (m + 3) // 4
        keep = bounds.shape[0] > 0
        for ch in prange(nchunks):
            acc = np.empty((4, CT.shape[1]), dtype=CT.dtype)
            for blk in range(ch * blocks // nchunks, (ch + 1) * blocks // nchunks):
                q0 = 4 * blk
                _tile4(X, rows[q0], rows[min(q0 + 1, m - 1)], rows[min(q0 + 2, m - 1)],
                       rows[min(q0 + 3, m - 1)], CT, kind, delta, acc)
                if keep:
                    for s in range(min(4, m - q0)):
                        row = bounds[rows[q0 + s]]
                        for u in range(k):
                            row[u] = acc[s, u]
                # branchless top-2 of the 4 samples at once (4 independent chains);
                # same result as: if v < b: s, b = b, v  elif v < s: s = v
                b0 = b1 = b2 = b3 = np.inf
                s0 = s1 = s2 = s3 = np.inf
                j0 = j1 = j2 = j3 = 0
                for u in range(k):
                    v = acc[0, u]
                    j0 = u if v < b0 else j0
                    s0 = min(s0, max(v, b0))
                    b0 = min(b0, v)
                    v = acc[1, u]
                    j1 = u if v < b1 else j1
                    s1 = min(s1, max(v, b1))
                    b1 = min(b1, v)
                    v = acc[2, u]
                    j2 = u if v < b2 else j2
                    s2 = min(s2, max(v, b2))
                    b2 = min(b2, v)
                    v = acc[3, u]
                    j3 = u if v < b3 else j3
                    s3 = min(s3, max(v, b3))
                    b3 = min(b3, v)
                ns = min(4, m - q0)
                labels[q0] = j0
                best[q0] = b0
                second[q0] = s0
                if ns > 1:
                    labels[q0 + 1] = j1
                    best[q0 + 1] = b1
                    second[q0 + 1] = s1
                if ns > 2:
                    labels[q0 + 2] = j2
                    best[q0 + 2] = b2
                    second[q0 + 2] = s2
                if ns > 3:
                    labels[q0 + 3] = j3
                    best[q0 + 3] = b3
                    second[q0 + 3] = s3

    @njit(inline="always", fastmath=_FM)
    def _lane_sums(XT, C, j, w, kind, delta, acc):
        """acc[q] += sum_f _rank_term(XT[f, q] - C[j, f]) for the w samples of a
        transposed tile, four coordinates per pass over the accumulators (the
        loop is bound by their loads and stores). Inlined with a constant
        ``kind``, so each kind compiles to its own branch-free loop."""
        d = C.shape[1]
        d2 = delta * delta
        f = 0
        while f + 4 <= d:
            c0, c1, c2, c3 = C[j, f], C[j, f + 1], C[j, f + 2], C[j, f + 3]
            x0, x1, x2, x3 = XT[f], XT[f + 1], XT[f + 2], XT[f + 3]
            for q in range(w):
                acc[q] += ((_rank_term(x0[q] - c0, kind, delta, d2)
                            + _rank_term(x1[q] - c1, kind, delta, d2))
                           + (_rank_term(x2[q] - c2, kind, delta, d2)
                              + _rank_term(x3[q] - c3, kind, delta, d2)))
            f += 4
        for g in range(f, d):
            c = C[j, g]
            row = XT[g]
            for q in range(w):
                acc[q] += _rank_term(row[q] - c, kind, delta, d2)

    @njit(inline="always", fastmath=_FM)
    def _coord_assign_lanes_body(X, C, rows, kind, delta, nchunks, labels, best, second):
        """:func:`_coord_assign_body` with samples, not centers, along the vector
        lanes: tiles of 128 samples are transposed once, then for each center
        the tile's losses and its running top-2 are vectorized across samples.
        Faster when d is small, where the other kernel's scalar top-2 over the
        k centers of each sample costs as much as the losses (see
        :func:`_lane_sums`); compiled once per kind (``_COORD_ASSIGN_LANES``)."""
        m = rows.shape[0]
        k, d = C.shape
        tile = 128
        n_tiles = (m + tile - 1) // tile
        inf = X.dtype.type(np.inf)
        zero = delta * X.dtype.type(0.0)
        d2 = delta * delta
        for ch in prange(nchunks):
            XT = np.empty((d, tile), X.dtype)
            acc = np.empty(tile, X.dtype)
            b = np.empty(tile, X.dtype)
            s = np.empty(tile, X.dtype)
            lab = np.empty(tile, np.int32)
            for ti in range(ch * n_tiles // nchunks, (ch + 1) * n_tiles // nchunks):
                t0 = ti * tile
                w = min(tile, m - t0)
                for q in range(w):
                    r = rows[t0 + q]
                    for f in range(d):
                        XT[f, q] = X[r, f]
                b[:] = inf
                s[:] = inf
                lab[:] = 0
                for j in range(k):
                    acc[:w] = zero
                    _lane_sums(XT, C, j, w, kind, delta, acc)
                    if kind == _PSEUDO_HUBER_RANK:  # see _tile4
                        base = d * d2
                        for q in range(w):
                            acc[q] = delta * acc[q] - base
                    jj = np.int32(j)
                    for q in range(w):  # branch-free running top-2
                        v = acc[q]
                        bq = b[q]
                        lab[q] = jj if v < bq else lab[q]
                        s[q] = min(s[q], max(v, bq))
                        b[q] = min(bq, v)
                for q in range(w):
                    labels[t0 + q] = lab[q]
                    best[t0 + q] = b[q]
                    second[t0 + q] = s[q]

    @njit(inline="always", fastmath=_FM)
    def _coord_pairwise_body(X, CT, kind, delta, nchunks, out):
        """Losses to the first out.shape[1] columns of CT (C transposed, (d, kp));
        compiled once per kind (``_COORD_PAIRWISE``)."""
        m, k = out.shape
        blocks = (m + 3) // 4
        for ch in prange(nchunks):
            acc = np.empty((4, CT.shape[1]), dtype=CT.dtype)
            for blk in range(ch * blocks // nchunks, (ch + 1) * blocks // nchunks):
                q0 = 4 * blk
                _tile4(X, q0, min(q0 + 1, m - 1), min(q0 + 2, m - 1), min(q0 + 3, m - 1),
                       CT, kind, delta, acc)
                for s in range(min(4, m - q0)):
                    for u in range(k):
                        out[q0 + s, u] = acc[s, u]

    @njit(inline="always", fastmath=_FM)
    def _pair_loss(x, c, kind, delta, d2):
        """Loss of one pair from its ranking terms (vectorized along the row)."""
        acc = _pair_sum(x, c, kind, delta)
        if kind == _PSEUDO_HUBER_RANK:  # see _tile4
            return delta * acc - x.shape[0] * d2
        return acc

    @njit(inline="always", fastmath=_FM)
    def _coord_scan_body(X, C, labels, bounds, drift, rel, kind, delta, nchunks, best, pairs):
        """Elkan's pruned assignment: ``bounds[i, j] - drift[j]`` is a lower bound
        of the loss of sample i to center j (``drift`` is each center's
        cumulative shift bound since its bounds were computed), so only the
        centers whose bound is below the best loss found so far (with a
        relative rounding slack ``rel``) get their loss computed, and it becomes
        their new bound. Starts from the own center ``labels[i]``; ties go to
        the lowest index, as in a full pass. ``pairs[ch]`` counts the losses
        computed; ``best`` is the exact loss (pseudo-Huber: not its ranking
        form). Compiled once per kind (``_COORD_SCAN``)."""
        n = X.shape[0]
        k = C.shape[0]
        d2 = delta * delta
        for ch in prange(nchunks):
            count = 0
            shift = np.empty(k, dtype=X.dtype)  # -drift, less the rounding slack
            for j in range(k):
                shift[j] = -drift[j] - rel * drift[j]
            todo = np.empty(k, dtype=np.int64)
            for i in range(ch * n // nchunks, (ch + 1) * n // nchunks):
                x = X[i]
                row = bounds[i]
                own = labels[i]
                u = _pair_loss(x, C[own], kind, delta, d2)
                row[own] = u + drift[own]
                # the centers whose bound is below u (own always is): counted
                # (vectorized), and listed (branch-free) only if another one is
                cut = u + rel * abs(u)
                m = 0
                for j in range(k):
                    m += row[j] + shift[j] <= cut
                if m > 1:
                    m = 0
                    for j in range(k):
                        todo[m] = j
                        m += row[j] + shift[j] <= cut
                else:
                    m = 0
                lab = own
                for q in range(m):
                    j = todo[q]
                    if j != own and row[j] + shift[j] <= u + rel * abs(u):
                        v = _pair_loss(x, C[j], kind, delta, d2)
                        count += 1
                        row[j] = v + drift[j]
                        if v < u or (v == u and j < lab):
                            u = v
                            lab = j
                labels[i] = lab
                if kind == _PSEUDO_HUBER_RANK:  # the exact loss, while x is in cache
                    u = _pair_loss(x, C[lab], PSEUDO_HUBER, delta, d2)
                best[i] = u
            pairs[ch] = count

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_rowwise(X, C, labels, rows, kind, delta, out):
        """Loss of X[rows[q]] to C[labels[q]] for every q."""
        for q in prange(out.shape[0]):
            out[q] = _pair1(X[rows[q]], C[labels[q]], kind, delta)

    @njit(inline="always", fastmath=_FM)
    def _top2_columns(GT, c_sqnorm, lo, hi, labels, best, second, want_second):
        """Nearest (and second-nearest) center of the columns lo:hi of a GEMM
        block GT = C X^T (k, m), by c_sqnorm - 2 GT (the samples' own norms are
        added later). The inner loop runs over a tile of 256 samples held in
        local arrays (float32 lanes, int32 labels), so it vectorizes across
        samples; branch-free."""
        k = GT.shape[0]
        tile = 256
        inf = c_sqnorm.dtype.type(np.inf)
        two = c_sqnorm.dtype.type(2.0)
        b = np.empty(tile, GT.dtype)
        s = np.empty(tile, GT.dtype)
        lab = np.empty(tile, np.int32)
        for t0 in range(lo, hi, tile):
            w = min(tile, hi - t0)
            b[:] = inf
            s[:] = inf
            lab[:] = 0
            for j in range(k):
                c = c_sqnorm[j]
                row = GT[j, t0:t0 + w]
                jj = np.int32(j)
                if want_second:
                    for t in range(w):
                        v = c - two * row[t]
                        bt = b[t]
                        lab[t] = jj if v < bt else lab[t]
                        s[t] = min(s[t], max(v, bt))
                        b[t] = min(bt, v)
                else:
                    for t in range(w):
                        v = c - two * row[t]
                        bt = b[t]
                        lab[t] = jj if v < bt else lab[t]
                        b[t] = min(bt, v)
            for t in range(w):
                labels[t0 + t] = lab[t]
                best[t0 + t] = b[t]
                if want_second:
                    second[t0 + t] = s[t]

    @njit(nogil=True, fastmath=_FM, cache=True)
    def _nb_gemm_top2(GT, c_sqnorm, labels, best, second, want_second):
        """:func:`_top2_columns` of every column, serial and GIL-free (blocks run
        on the threads of ``_run_blocks``)."""
        _top2_columns(GT, c_sqnorm, 0, GT.shape[1], labels, best, second, want_second)

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_gemm_top2_parallel(GT, c_sqnorm, labels, best, second, want_second, nchunks):
        """:func:`_top2_columns` of every column, in ``nchunks`` parallel chunks."""
        m = GT.shape[1]
        for c in prange(nchunks):
            _top2_columns(GT, c_sqnorm, c * m // nchunks, (c + 1) * m // nchunks,
                          labels, best, second, want_second)

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_row_sqnorms(X, out):
        for i in prange(X.shape[0]):
            acc = X[i, 0] * X[i, 0]
            for t in range(1, X.shape[1]):
                acc += X[i, t] * X[i, t]
            out[i] = acc

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_weighted_sums(X, labels, weights, use_weights, S, A):
        n, d = X.shape
        nchunks = S.shape[0]
        for c in prange(nchunks):
            for i in range(c * n // nchunks, (c + 1) * n // nchunks):
                j = labels[i]
                w = weights[i] if use_weights else 1.0
                A[c, j] += w
                for t in range(d):
                    S[c, j, t] += w * X[i, t]

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_radial_stats(X, C, labels, kind, param, tiny, S, st):
        n, d = X.shape
        nchunks = S.shape[0]
        inv2s2 = 0.5 / (param * param) if param > 0 else 0.0
        for c in prange(nchunks):
            for i in range(c * n // nchunks, (c + 1) * n // nchunks):
                j = labels[i]
                d2 = 0.0
                for t in range(d):
                    r = np.float64(X[i, t]) - np.float64(C[j, t])
                    d2 += r * r
                a = 0.0
                if kind == CORRENTROPY:
                    a = math.exp(-d2 * inv2s2)
                    st[c, 2, j] += 1.0 - a
                else:  # GEOMETRIC_MEDIAN
                    r = math.sqrt(d2)
                    st[c, 2, j] += r
                    if r <= tiny:
                        st[c, 1, j] += 1.0
                    else:
                        a = 1.0 / r
                st[c, 0, j] += a
                if a != 0.0:
                    for t in range(d):
                        S[c, j, t] += a * X[i, t]

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_epsilon_stats(X, C, labels, eps, tiny, G, st, b):
        """Per chunk, in X's precision along the rows (v = x - c is exact where
        x and c are close, Sterbenz): G[j] += v / r over the points outside the
        tube, st[0, j] += 2 c_t, st[1, j] += the loss; b[i] per sample (see
        :func:`epsilon_stats`)."""
        n, d = X.shape
        nchunks = G.shape[0]
        for c in prange(nchunks):
            v = np.empty(d, X.dtype)
            for i in range(c * n // nchunks, (c + 1) * n // nchunks):
                j = labels[i]
                sq = X.dtype.type(0.0)
                for t in range(d):
                    v[t] = X[i, t] - C[j, t]
                    sq += v[t] * v[t]
                d2 = np.float64(sq)
                r = math.sqrt(d2)
                if r > eps + tiny:
                    inv = 1.0 / r
                    st[c, 0, j] += inv
                    st[c, 1, j] += r - eps
                    b[i] = 2.0 * (max(0.5 * inv, 0.25 / (r - eps)) - 0.5 * inv) / d2
                    w = X.dtype.type(inv)
                    for t in range(d):
                        G[c, j, t] += w * v[t]
                else:
                    st[c, 0, j] += 1.0 / eps
                    rr = min(r, eps - tiny)
                    radial = eps / (2.0 * (eps * eps - rr * rr))
                    b[i] = 2.0 * (radial - 0.5 / eps) / d2 if d2 > 0.0 else 0.0

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_lowrank_matvec(X, C, labels, rows, b, P, out):
        """Per chunk: out[j] += b_i (v_i . P_j) v_i over the samples ``rows``, with
        v_i = x_i - c_j, in X's precision (P cast to it)."""
        m = rows.shape[0]
        d = P.shape[1]
        nchunks = out.shape[0]
        for c in prange(nchunks):
            for q in range(c * m // nchunks, (c + 1) * m // nchunks):
                i = rows[q]
                j = labels[i]
                s = X.dtype.type(0.0)
                for t in range(d):
                    s += (X[i, t] - C[j, t]) * P[j, t]
                s = X.dtype.type(b[i] * s)
                for t in range(d):
                    out[c, j, t] += s * (X[i, t] - C[j, t])

    @njit(fastmath=_FM, cache=True)
    def _partition(src, dst, lo, hi, p):
        """Branch-free partition of src[lo:hi] around p into dst: values < p to the
        front, the others to the back (reversed); returns the end of the front.
        Unsigned cursors spare numba's negative-index checks (about 1.7x faster)."""
        one = np.uint64(1)
        nl = np.uint64(lo)
        ng = np.uint64(hi - 1)
        for i in range(np.uint64(lo), np.uint64(hi)):
            v = src[i]
            dst[nl] = v
            dst[ng] = v
            less = np.uint64(v < p)
            nl += less
            ng -= one - less
        return np.int64(nl)

    @njit(fastmath=_FM, cache=True)
    def _window(a, work, lo_value, hi_value, first, last):
        """Copy to ``work`` the values of ``a`` in [lo_value, hi_value]; returns
        (count copied, count below) when that window holds the ranks
        first..last, else (0, 0). One pass of two comparisons."""
        m = np.uint64(0)
        below = np.uint64(0)
        for i in range(np.uint64(0), np.uint64(a.shape[0])):
            v = a[i]
            work[m] = v
            m += np.uint64((v >= lo_value) & (v <= hi_value))
            below += np.uint64(v < lo_value)
        m = np.int64(m)
        below = np.int64(below)
        if below <= first and last < below + m:
            return m, below
        return 0, 0

    @njit(fastmath=_FM, cache=True)
    def _bracket(a, work, tmp, first, last):
        """Copy to ``work`` a window of the values of ``a`` that holds the ranks
        first..last; returns (count copied, count below), or (0, 0) when no
        window did (a few % of calls; the caller then selects in all of ``a``).

        The window spans ~2 standard deviations of the sample rank around the
        quantiles of a sorted strided sample of 32 values (~40% of the values)."""
        n = a.shape[0]
        s, gap = 32, 6  # gap: ~2 standard deviations of the sample rank of the median
        for i in range(s):  # insertion sort of a strided sample into tmp[:s]
            v = a[(i * n) // s]
            j = i - 1
            while j >= 0 and tmp[j] > v:
                tmp[j + 1] = tmp[j]
                j -= 1
            tmp[j + 1] = v
        lo_value = tmp[max((first * s) // n - gap, 0)]
        hi_value = tmp[min((last * s) // n + gap, s - 1)]
        return _window(a, work, lo_value, hi_value, first, last)

    @njit(fastmath=_FM, cache=True)
    def _near_window(a, work, mid, half):
        """Copy to ``work`` the values v of ``a`` with |v - mid| <= half; returns
        (count copied, count below). v - mid is monotone in v, so the values
        below, in and above the window are consecutive ranks. The count is a
        vectorized pass of its own, the copy a loop with one rarely taken
        branch per value (measured fastest: a two-sided test compiles to a
        mispredicted branch on v >= lo, and counting in the copy loop slows it)."""
        below = 0
        for i in range(a.shape[0]):
            below += np.int32(a[i] - mid < -half)
        m = 0
        for i in range(a.shape[0]):
            if abs(a[i] - mid) <= half:
                work[m] = a[i]
                m += 1
        return m, below

    @njit(fastmath=_FM, cache=True)
    def _hinted_window(a, work, first, last, hint):
        """Copy to ``work`` a window around ``hint`` (the previous median, which
        the new one is usually close to) that holds the ranks first..last:
        half-width 2.5% of the mean |v - hint| (~2% of the values of a normal
        sample), and if that misses, once more on the median's side, 8 times
        wider. Returns (count copied, count below); (0, 0) when both miss or
        when the hint's own rank is more than n / 128 from the median's (no
        narrow window would hold it: the caller then brackets by sampling)."""
        n = a.shape[0]
        spread = hint * 0
        hint_rank = 0
        for i in range(n):
            e = a[i] - hint
            spread += abs(e)
            hint_rank += np.int32(e < 0)
        if abs(hint_rank - first) * 128 > n:
            return 0, 0
        half = spread * a.dtype.type(0.025 / n)
        m, below = _near_window(a, work, hint, half)
        if below <= first and last < below + m:
            return m, below
        mid = hint - 9 * half if below > first else hint + 9 * half
        m, below = _near_window(a, work, mid, 8 * half)
        if below <= first and last < below + m:
            return m, below
        return 0, 0

    @njit(fastmath=_FM, cache=True)
    def _select(a, tmp, kth):
        """(value of rank kth - 1 or NaN when not at hand, value of rank kth) of ``a``
        (destroyed; ``tmp`` is scratch of the same size).

        Quickselect with branch-free partitions (each element is written to both
        ends of the scratch buffer and only one cursor advances), so there is no
        mispredicted branch per element.
        """
        nan = a.dtype.type(np.nan)
        lo = 0
        hi = a.shape[0]
        src = a
        dst = tmp
        while hi - lo > 16:
            x0 = src[lo]
            x1 = src[(lo + hi) // 2]
            x2 = src[hi - 1]
            p = max(min(x0, x1), min(max(x0, x1), x2))
            nl = _partition(src, dst, lo, hi, p)
            if kth < nl:
                hi = nl
            elif nl > lo:
                lo = nl
            else:  # every value >= p: drop the copies of p
                n_eq = 0
                for i in range(lo, hi):
                    n_eq += dst[i] == p
                if kth < lo + n_eq:
                    return (p if kth > lo else nan), p
                n_gt = 0  # compact the values > p to the front, in place
                for i in range(lo, hi):
                    v = dst[i]
                    dst[lo + n_gt] = v
                    n_gt += v > p
                kth -= n_eq
                hi = lo + n_gt
            src, dst = dst, src
        for i in range(lo + 1, hi):  # insertion sort of the last few values
            v = src[i]
            j = i - 1
            while j >= lo and src[j] > v:
                src[j + 1] = src[j]
                j -= 1
            src[j + 1] = v
        return (src[kth - 1] if kth > lo else nan), src[kth]

    @njit(fastmath=_FM, cache=True)
    def _median(a, work, tmp, hint):
        """Median of ``a`` (kept intact; mean of the two middle values for even
        sizes); ``hint``: a value near it, or NaN."""
        n = a.shape[0]
        h = n // 2
        first = h - 1 + n % 2
        m, below = _hinted_window(a, work, first, h, hint) if n >= 64 and hint == hint else (0, 0)
        if m == 0 and n >= 256:
            m, below = _bracket(a, work, tmp, first, h)
        if m > 0:
            lower, upper = _select(work[:m], tmp, h - below)
        else:
            work[:n] = a
            lower, upper = _select(work[:n], tmp, h)
        if n % 2 == 1:
            return upper
        if lower == lower:  # not NaN: the final sorted run held rank h - 1 too
            return 0.5 * (lower + upper)
        neg = a.dtype.type(-np.inf)
        below = 0  # values < upper, and the largest of them
        lower = neg
        for i in range(n):
            v = a[i]
            below += v < upper
            lower = max(lower, v if v < upper else neg)
        return 0.5 * (upper + (upper if below < h else lower))

    @njit(nogil=True, cache=True)
    def _nb_group(labels, k, perm, offsets):
        """Counting sort: ``perm[offsets[j]:offsets[j + 1]]`` are the rows of cluster j
        (in order)."""
        offsets[:] = 0
        for i in range(labels.shape[0]):
            offsets[labels[i] + 1] += 1
        for j in range(k):
            offsets[j + 1] += offsets[j]
        fill = offsets[:k].copy()
        for i in range(labels.shape[0]):
            j = labels[i]
            perm[fill[j]] = i
            fill[j] += 1

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_medians(X, perm, offsets, task_cluster, task_col, task_width, nchunks, out):
        """Exact per-cluster medians. Task t copies the columns task_col[t] +
        0..task_width[t] of the rows of cluster task_cluster[t]
        (``perm[offsets[j]:offsets[j + 1]]``), transposed, then selects each
        column's median. Rows are read whole-segment (16 at a time, through a
        row-major stage), so the copy streams; tasks are dealt round-robin to
        the ``nchunks`` parallel chunks, which allocate their buffers once.
        ``out`` holds the previous centers on entry: hints for the selection."""
        d = X.shape[1]
        n_tasks = task_cluster.shape[0]
        size = 1
        most = 1
        for t in range(n_tasks):
            cnt = offsets[task_cluster[t] + 1] - offsets[task_cluster[t]]
            size = max(size, cnt * task_width[t])
            most = max(most, cnt)
        for ch in prange(nchunks):
            buf = np.empty(size, dtype=X.dtype)
            stage = np.empty((16, d), dtype=X.dtype)
            work = np.empty(most, dtype=X.dtype)
            tmp = np.empty(most, dtype=X.dtype)
            for t in range(ch, n_tasks, nchunks):
                j = task_cluster[t]
                c0 = task_col[t]
                w = task_width[t]
                start = offsets[j]
                cnt = offsets[j + 1] - start
                for m0 in range(0, cnt, 16):
                    h = min(16, cnt - m0)
                    for q in range(h):  # (a slice copy: X[i, c0 + c] costs index checks)
                        stage[q, :w] = X[perm[start + m0 + q], c0:c0 + w]
                    for c in range(w):
                        base = c * cnt + m0
                        for q in range(h):
                            buf[base + q] = stage[q, c]
                for c in range(w):  # out: the previous centers
                    out[j, c0 + c] = _median(buf[c * cnt:(c + 1) * cnt], work, tmp,
                                             out[j, c0 + c])

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_psi_sums_active(X, rows, labels, mu, kind, delta, ptr, cols, g, h):
        """:func:`_nb_psi_sums` (without bounds) over the samples ``rows`` and, for
        a sample of cluster j, only its active columns ``cols[ptr[j]:ptr[j + 1]]``."""
        m = rows.shape[0]
        nchunks = g.shape[0]
        inv = 1.0 / (delta * delta)
        for c in prange(nchunks):
            for q in range(c * m // nchunks, (c + 1) * m // nchunks):
                i = rows[q]
                j = labels[i]
                for p in range(ptr[j], ptr[j + 1]):
                    t = cols[p]
                    r = X[i, t] - mu[j, t]
                    if kind == HUBER:
                        g[c, j, t] += min(max(r, -delta), delta)
                        h[c, j, t] += 1.0 if abs(r) <= delta else 0.0
                    else:
                        s = 1.0 / math.sqrt(1.0 + r * r * inv)
                        g[c, j, t] += r * s
                        h[c, j, t] += s * s * s

    @njit(parallel=True, fastmath=_FM, cache=True)
    def _nb_psi_sums(X, labels, mu, kind, delta, g, h, lo, hi, bounds):
        """Streaming pass over row chunks: per (cluster, column) sums of psi(x - mu)
        and psi'(x - mu) (and, if ``bounds``, the min / max of x)."""
        n, d = X.shape
        nchunks = g.shape[0]
        inv = 1.0 / (delta * delta)
        for c in prange(nchunks):
            for i in range(c * n // nchunks, (c + 1) * n // nchunks):
                j = labels[i]
                if kind == HUBER:
                    for t in range(d):
                        r = X[i, t] - mu[j, t]
                        g[c, j, t] += min(max(r, -delta), delta)
                        h[c, j, t] += 1.0 if abs(r) <= delta else 0.0
                else:
                    for t in range(d):
                        r = X[i, t] - mu[j, t]
                        s = 1.0 / math.sqrt(1.0 + r * r * inv)
                        g[c, j, t] += r * s
                        h[c, j, t] += s * s * s
                if bounds:
                    for t in range(d):
                        lo[c, j, t] = min(lo[c, j, t], X[i, t])
                        hi[c, j, t] = max(hi[c, j, t], X[i, t])


# --------------------------------------------------------------------------
# triton kernel (CUDA)
# --------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _tl_rho(r, delta, KIND: tl.constexpr):
        if KIND == 0:
            v = tl.abs(r)
        elif KIND == 1:
            a = tl.abs(r)
            h = tl.minimum(a, delta)
            v = h * (a - 0.5 * h)
        else:
            r2 = r * r
            v = r2 / (1.0 + tl.sqrt(1.0 + r2 / (delta * delta)))
        return v

    @triton.jit
    def _tl_coord_pairwise(X, C, out, m, k, d, stride_x, stride_c, delta, KIND: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """(BLOCK_M, BLOCK_N) tile of the pairwise loss matrix."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < m
        mask_n = offs_n < k
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, d, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < d
            x = tl.load(X + offs_m[:, None].to(tl.int64) * stride_x + offs_k[None, :],
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            c = tl.load(C + offs_n[:, None].to(tl.int64) * stride_c + offs_k[None, :],
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            acc += tl.sum(_tl_rho(x[:, None, :] - c[None, :, :], delta, KIND), axis=2)
        tl.store(out + offs_m[:, None].to(tl.int64) * k + offs_n[None, :], acc,
                 mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _tl_coord_assign(X, C, rows, labels, best, second, m, k, d, stride_x, stride_c, delta,
                         KIND: tl.constexpr, HAS_ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Best / second-best center of BLOCK_M rows: the (rows, centers, dims) tile
        of rho(x - c) lives in registers only."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m
        if HAS_ROWS:
            row = tl.load(rows + offs_m, mask=mask_m, other=0).to(tl.int64)
        else:
            row = offs_m.to(tl.int64)
        top = tl.full([BLOCK_M], float("inf"), tl.float32)
        runner_up = tl.full([BLOCK_M], float("inf"), tl.float32)
        arg = tl.zeros([BLOCK_M], tl.int32)
        for n0 in range(0, k, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < k
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for k0 in range(0, d, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < d
                x = tl.load(X + row[:, None] * stride_x + offs_k[None, :],
                            mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                c = tl.load(C + offs_n[:, None].to(tl.int64) * stride_c + offs_k[None, :],
                            mask=mask_n[:, None] & mask_k[None, :], other=0.0)
                acc += tl.sum(_tl_rho(x[:, None, :] - c[None, :, :], delta, KIND), axis=2)
            acc = tl.where(mask_n[None, :], acc, float("inf"))
            block_top = tl.min(acc, axis=1)
            block_arg = tl.argmin(acc, axis=1).to(tl.int32)
            acc = tl.where(tl.arange(0, BLOCK_N)[None, :] == block_arg[:, None], float("inf"), acc)
            block_second = tl.min(acc, axis=1)
            better = block_top < top
            runner_up = tl.where(better, tl.minimum(top, block_second),
                                 tl.minimum(runner_up, block_top))
            arg = tl.where(better, n0 + block_arg, arg)
            top = tl.where(better, block_top, top)
        tl.store(labels + offs_m, arg.to(tl.int64), mask=mask_m)
        tl.store(best + offs_m, top, mask=mask_m)
        tl.store(second + offs_m, runner_up, mask=mask_m)


if numba is not None:
    def _kind_kernel(fn, name):
        """``fn`` (which calls an inline body with a constant kind) as a parallel,
        disk-cached numba kernel named ``name``: one kernel per kind, compiled on
        its first call, so a fit compiles only the loss it uses."""
        fn.__name__ = fn.__qualname__ = name
        return njit(parallel=True, fastmath=_FM, cache=True)(fn)

    def _assign_kernel(kind):
        def kernel(X, CT, k, rows, delta, nchunks, labels, best, second, bounds):
            _coord_assign_body(X, CT, k, rows, kind, delta, nchunks, labels, best, second,
                               bounds)
        return _kind_kernel(kernel, f"_nb_coord_assign_{kind}")

    def _scan_kernel(kind):
        def kernel(X, C, labels, bounds, drift, rel, delta, nchunks, best, pairs):
            _coord_scan_body(X, C, labels, bounds, drift, rel, kind, delta, nchunks, best, pairs)
        return _kind_kernel(kernel, f"_nb_coord_scan_{kind}")

    def _lanes_kernel(kind):
        def kernel(X, C, rows, delta, nchunks, labels, best, second):
            _coord_assign_lanes_body(X, C, rows, kind, delta, nchunks, labels, best, second)
        return _kind_kernel(kernel, f"_nb_coord_assign_lanes_{kind}")

    def _pairwise_kernel(kind):
        def kernel(X, CT, delta, nchunks, out):
            _coord_pairwise_body(X, CT, kind, delta, nchunks, out)
        return _kind_kernel(kernel, f"_nb_coord_pairwise_{kind}")

    _RANK_KINDS = (ABS, HUBER, _PSEUDO_HUBER_RANK, SQUARED)
    _COORD_ASSIGN = {kind: _assign_kernel(kind) for kind in _RANK_KINDS}
    _COORD_ASSIGN_LANES = {kind: _lanes_kernel(kind) for kind in _RANK_KINDS}
    _COORD_SCAN = {kind: _scan_kernel(kind) for kind in _RANK_KINDS}
    _COORD_PAIRWISE = {kind: _pairwise_kernel(kind) for kind in (ABS, HUBER, PSEUDO_HUBER, SQUARED)}


_TRITON_BROKEN = []  # set once a launch failed: use the torch path from then on


def _triton_usable(X):
    return (triton is not None and not _TRITON_BROKEN and X.dtype == torch.float32
            and (X.device.type == "cuda" or bool(os.environ.get("TRITON_INTERPRET"))))


def _triton_failed(error):  # pragma: no cover - depends on the GPU toolchain
    import warnings

    warnings.warn(f"triton coordinate-wise kernels unavailable ({error}); using torch")
    _TRITON_BROKEN.append(error)


def _triton_coord_pairwise(X, C, kind, delta):
    """Pairwise coordinate-wise losses on CUDA float32 (None if triton can't)."""
    if not _triton_usable(X):
        return None
    m, k = X.shape[0], C.shape[0]
    out = torch.empty((m, k), dtype=torch.float32, device=X.device)
    X, C = X.contiguous(), C.contiguous()
    try:
        _tl_coord_pairwise[(triton.cdiv(m, 32), triton.cdiv(k, 32))](
            X, C, out, m, k, X.shape[1], X.stride(0), C.stride(0), float(delta), KIND=kind,
            BLOCK_M=32, BLOCK_N=32, BLOCK_K=8)
    except Exception as error:  # pragma: no cover
        _triton_failed(error)
        return None
    return out


def _triton_coord_assign(X, C, kind, delta, rows):
    """Fused assignment on CUDA float32 (None if triton can't)."""
    if not _triton_usable(X):
        return None
    m = X.shape[0] if rows is None else rows.shape[0]
    labels = torch.empty(m, dtype=torch.int64, device=X.device)
    best = torch.empty(m, dtype=torch.float32, device=X.device)
    second = torch.empty(m, dtype=torch.float32, device=X.device)
    if m == 0:
        return labels, best, second
    C = C.contiguous()
    block_m = 32
    try:
        _tl_coord_assign[(triton.cdiv(m, block_m),)](
            X, C, rows if rows is not None else labels, labels, best, second, m, C.shape[0],
            X.shape[1], X.stride(0), C.stride(0), float(delta), KIND=kind,
            HAS_ROWS=rows is not None, BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=8)
    except Exception as error:  # pragma: no cover - depends on the GPU toolchain
        _triton_failed(error)
        return None
    return labels, best, second


# --------------------------------------------------------------------------
# torch helpers
# --------------------------------------------------------------------------
def rho_torch(r, kind, delta):
    """Elementwise coordinate loss rho(r) in torch."""
    if kind == ABS:
        return r.abs()
    if kind == HUBER:
        a = r.abs()
        m = a.clamp(max=delta)
        return m * (a - 0.5 * m)
    if kind == PSEUDO_HUBER:
        r2 = r * r
        return r2 / (1.0 + torch.sqrt(1.0 + r2 / (delta * delta)))
    return r * r


def _row_chunk(n, per_row, budget):
    return max(1, min(n, budget // max(1, per_row)))


def row_sqnorms(X):
    """(n,) squared Euclidean norms of the rows of X."""
    if numba_active(X):
        x = _np(X)
        out = np.empty(x.shape[0], dtype=x.dtype)
        _call(_nb_row_sqnorms, x.size, x, out)
        return torch.from_numpy(out)
    n = X.shape[0]
    out = torch.empty(n, dtype=X.dtype, device=X.device)
    rows = _row_chunk(n, X.shape[1], _budget(X) // 4)
    for s in range(0, n, rows):
        out[s:s + rows] = (X[s:s + rows] ** 2).sum(1)
    return out


_POOL = []  # [(threads, ThreadPoolExecutor)] of _run_blocks
#: sqeuclidean_nearest over all samples with n * k at most this (16 MB of
#: float32 distances) runs as one GEMM + one parallel scan instead of blocks
_ONE_GEMM = 1 << 22


def _run_blocks(work, blocks):
    """``work(block)`` for every block, on torch.get_num_threads() Python threads
    (``work`` must release the GIL: single-threaded BLAS, nogil numba kernels).

    Blocks are handed out one at a time, so a thread descheduled on a shared
    machine just takes fewer blocks; one multi-threaded GEMM per block would
    instead wait at every barrier for its slowest thread.
    """
    threads = torch.get_num_threads()
    if threads == 1 or len(blocks) == 1:
        for block in blocks:
            work(block)
        return
    if not _POOL or _POOL[0][0] != threads:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL:
            _POOL.pop()[1].shutdown()
        _POOL.append((threads, ThreadPoolExecutor(threads, thread_name_prefix="clustering")))
    for future in [_POOL[0][1].submit(work, block) for block in blocks]:
        future.result()


_BLAS = []  # [threadpoolctl controller] of _single_threaded_blas


def _single_threaded_blas():
    """Context that limits numpy's BLAS to one thread (a null context without
    threadpoolctl): the numba path runs one single-threaded GEMM per block on
    each thread of ``_run_blocks`` (numpy's OpenBLAS sgemm was ~25% faster
    than torch's MKL on the AMD EPYC this was tuned on)."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings it
            _BLAS.append(None)
        else:
            _BLAS.append(ThreadpoolController())
    if _BLAS[0] is None:  # pragma: no cover
        return contextlib.nullcontext()
    return _BLAS[0].limit(limits=1, user_api="blas")


def sqeuclidean_nearest(X, C, x_sqnorm, chunk, rows=None, second=False):
    """Nearest center of the samples ``rows`` (sorted; all if None) by chunked GEMM.

    Returns (labels, squared distance to the nearest center, and with
    ``second`` to the second nearest (inf when k == 1), else None); distances
    are clamped at 0. Rows are taken block by block of ``chunk`` consecutive
    samples: a block with many requested rows is computed whole (no gather),
    the requested rows of a sparse block are gathered. On the numba path the
    blocks run on parallel threads (``_run_blocks``), each a single-threaded
    numpy GEMM ``C X^T`` followed by a top-2 scan vectorized across samples;
    all samples of a small problem (n k <= ``_ONE_GEMM``) are one
    multi-threaded GEMM and one parallel scan.
    """
    n, k = X.shape[0], C.shape[0]
    m = n if rows is None else rows.shape[0]
    fused = numba_active(X)
    c_sqnorm = (C * C).sum(1)
    labels = torch.empty(m, dtype=torch.int64, device=X.device)
    best = torch.empty(m, dtype=X.dtype, device=X.device)
    runner_up = torch.full((m,), math.inf, dtype=X.dtype, device=X.device) if second else None
    if rows is not None:
        edges = torch.searchsorted(rows, torch.arange(0, n + chunk, chunk, device=X.device))
        edges = edges.tolist()
    blocks = []  # (samples of the GEMM, which of its rows to keep or None, output slice)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        if rows is None:
            blocks.append((slice(s, e), None, slice(s, e)))
            continue
        lo, hi = edges[s // chunk], edges[s // chunk + 1]
        if lo == hi:
            continue
        dense = hi - lo > (e - s) // 3
        blocks.append((slice(s, e), rows[lo:hi] - s, slice(lo, hi)) if dense
                      else (rows[lo:hi], None, slice(lo, hi)))
    if fused:
        x, c, c_sq = _np(X), _np(C), _np(c_sqnorm)
        want_second = second and k > 1
        lab_np, best_np = labels.numpy(), best.numpy()
        second_np = runner_up.numpy() if want_second else best_np  # unwritten when not wanted
    if fused and rows is None and n * k <= _ONE_GEMM:
        # small problem: one multi-threaded GEMM and a parallel scan beat
        # per-block work items, whose hand-offs would cost as much as the work
        work = n * k * 4
        _call(_nb_gemm_top2_parallel, work, np.matmul(c, x.T), c_sq, lab_np, best_np, second_np,
              want_second, _n_chunks(n, work))
    elif fused:

        def scan(block):
            samples, pick, out_rows = block
            part = x[samples if isinstance(samples, slice) else samples.numpy()]
            GT = np.matmul(c, part.T)  # (k, rows): samples along the vector lanes
            if pick is None:
                lab, dist, sec = lab_np[out_rows], best_np[out_rows], second_np[out_rows]
            else:  # a dense block with some rows wanted: scan all, keep those
                lab = np.empty(part.shape[0], np.int64)
                dist, sec = np.empty_like(part[:, 0]), np.empty_like(part[:, 0])
            _nb_gemm_top2(GT, c_sq, lab, dist, sec, want_second)
            if pick is not None:
                idx = pick.numpy()
                lab_np[out_rows], best_np[out_rows] = lab[idx], dist[idx]
                if want_second:
                    second_np[out_rows] = sec[idx]

        with _single_threaded_blas():
            _run_blocks(scan, blocks)
    else:
        buffer = torch.empty((min(n, chunk), k), dtype=X.dtype, device=X.device)
        for samples, pick, out_rows in blocks:
            part = X[samples]
            out = buffer[:part.shape[0]]
            torch.addmm(c_sqnorm, part, C.T, beta=1, alpha=-2, out=out)
            if pick is not None:
                out = out[pick]
            torch.min(out, 1, out=(best[out_rows], labels[out_rows]))
            if second and k > 1:
                out.scatter_(1, labels[out_rows, None], math.inf)
                torch.amin(out, 1, out=runner_up[out_rows])
    norms = x_sqnorm if rows is None else x_sqnorm[rows]
    best += norms
    if second:
        runner_up += norms
        runner_up.clamp_(min=0)
    return labels, best.clamp_(min=0), runner_up


def sqeuclidean_pairwise(X, C, x_sqnorm=None):
    """(m, k) squared Euclidean distances via GEMM, clamped at 0."""
    if x_sqnorm is None:
        x_sqnorm = (X * X).sum(1)
    d2 = torch.addmm((C * C).sum(1), X, C.T, beta=1, alpha=-2)
    d2 += x_sqnorm[:, None]
    return d2.clamp_(min=0)


def _typed(value, array):
    return array.dtype.type(value)


def _transposed(C):
    """C as a (d, kp) array, kp = k rounded up to a multiple of 8 (zero columns):
    the layout of the tiled coordinate-wise kernels (centers are the vector lanes)."""
    k, d = C.shape
    CT = np.zeros((d, k + (-k % 8)), dtype=C.dtype)
    CT[:, :k] = C.T
    return CT


def _chunks(work, m):
    """Number of parallel chunks of the tiled kernels (1: serial)."""
    return 1 if work < _SERIAL_WORK else max(1, min(numba.get_num_threads(), (m + 3) // 4))


def coord_pairwise(X, C, kind, delta):
    """(m, k) matrix of sum_t rho(x_t - c_t), without an (m, k, d) temporary."""
    m, k = X.shape[0], C.shape[0]
    if numba_active(X):
        x = _np(X)
        out = np.empty((m, k), dtype=x.dtype)
        _call(_COORD_PAIRWISE[kind], x.size * k, x, _transposed(_np(C)), _typed(delta, x),
              _chunks(x.size * k, m), out)
        return torch.from_numpy(out)
    fused = _triton_coord_pairwise(X, C, kind, delta)
    if fused is not None:
        return fused
    if kind == ABS:
        return torch.cdist(X, C, p=1)
    out = torch.empty((m, k), dtype=X.dtype, device=X.device)
    kb = max(1, min(k, _budget(X) // X.shape[1]))
    rows = _row_chunk(m, kb * X.shape[1], _budget(X))
    for s in range(0, m, rows):
        e = min(m, s + rows)
        for j in range(0, k, kb):
            f = min(k, j + kb)
            out[s:e, j:f] = rho_torch(X[s:e, None, :] - C[None, j:f, :], kind, delta).sum(-1)
    return out


def coord_assign(X, C, kind, delta, rows=None, bounds=None):
    """Best center, best loss and second-best loss for ``X[rows]`` (all rows if None).

    ``bounds``: an (n, k) numpy array of X's dtype (numba path, d above
    ``_LANES_MAX_D``) that receives every computed loss, row by row, as the
    bounds of :func:`coord_scan`.
    """
    if numba_active(X):
        x = _np(X)
        idx = np.arange(x.shape[0]) if rows is None else _np(rows).astype(np.int64, copy=False)
        m = idx.shape[0]
        labels = np.empty(m, dtype=np.int64)
        best = np.empty(m, dtype=x.dtype)
        second = np.empty(m, dtype=x.dtype)
        k = C.shape[0]
        rank_kind = _PSEUDO_HUBER_RANK if kind == PSEUDO_HUBER else kind
        work = m * x.shape[1] * k
        if x.shape[1] <= _LANES_MAX_D:
            if bounds is not None:
                raise ValueError(f"bounds need d > {_LANES_MAX_D}")
            _call(_COORD_ASSIGN_LANES[rank_kind], work, x, np.ascontiguousarray(_np(C)), idx,
                  _typed(delta, x), _n_chunks(max(1, m // 128), work), labels, best, second)
        else:
            _call(_COORD_ASSIGN[rank_kind], work, x, _transposed(_np(C)), k, idx,
                  _typed(delta, x), _chunks(work, m), labels, best, second,
                  np.empty((0, k), x.dtype) if bounds is None else bounds)
        return torch.from_numpy(labels), torch.from_numpy(best), torch.from_numpy(second)
    if bounds is not None:
        raise ValueError("bounds need the numba kernels")
    fused = _triton_coord_assign(X, C, kind, delta, rows)
    if fused is not None:
        return fused
    Xr = X if rows is None else X[rows]
    m, k = Xr.shape[0], C.shape[0]
    labels = torch.empty(m, dtype=torch.int64, device=X.device)
    best = torch.empty(m, dtype=X.dtype, device=X.device)
    second = torch.full((m,), math.inf, dtype=X.dtype, device=X.device)
    rows_per = _row_chunk(m, k, _budget(X))
    for s in range(0, m, rows_per):
        e = min(m, s + rows_per)
        block = coord_pairwise(Xr[s:e], C, kind, delta)
        if k > 1:
            vals, idx = torch.topk(block, 2, dim=1, largest=False, sorted=True)
            best[s:e], labels[s:e], second[s:e] = vals[:, 0], idx[:, 0], vals[:, 1]
        else:
            best[s:e], labels[s:e] = block[:, 0], 0
    return labels, best, second


#: relative rounding slack of the bound test in :func:`coord_scan`, in units of
#: the dtype's epsilon (bounds store loss + drift, both rounded, and the loss is
#: a sum of d rounded terms)
_SCAN_SLACK = 64


def coord_scan(X, C, labels, bounds, drift, kind, delta):
    """Elkan's pruned coordinate-wise assignment of every sample (numba path).

    ``bounds[i, j] - drift[j]`` must be a lower bound of the loss of sample i to
    center j (from :func:`coord_assign` with ``bounds``, then kept up to date
    by this function; ``drift`` (k,) is each center's cumulative shift bound
    since then). Starting from ``labels``, only the pairs whose bound is below
    the best loss found so far get their loss computed. Returns (labels, best
    loss, number of losses computed beyond each sample's own center);
    ``bounds`` is updated in place.
    """
    x = _np(X)
    n, d = x.shape
    lab = _np(labels).astype(np.int64, copy=True)
    best = np.empty(n, dtype=x.dtype)
    pairs = np.zeros(max(1, min(numba.get_num_threads(), n)), dtype=np.int64)
    rel = _typed(_SCAN_SLACK * np.finfo(x.dtype).eps, x)
    _call(_COORD_SCAN[_PSEUDO_HUBER_RANK if kind == PSEUDO_HUBER else kind],
          n * d * max(1, C.shape[0] // 4), x,
          _np(C).astype(x.dtype, copy=False), lab, bounds, np.asarray(drift, dtype=x.dtype),
          rel, _typed(delta, x), pairs.shape[0], best, pairs)
    return torch.from_numpy(lab), torch.from_numpy(best), int(pairs.sum())


def rowwise_loss(X, C, labels, kind, delta=1.0, rows=None):
    """sum_t rho(x_it - c_{labels_q, t}) for the samples i = rows[q] (all if None);
    kind SQUARED gives squared distances."""
    if numba_active(X):
        x = _np(X)
        idx = np.arange(x.shape[0]) if rows is None else _np(rows)
        out = np.empty(idx.shape[0], dtype=x.dtype)
        _call(_nb_rowwise, out.shape[0] * x.shape[1], x, _np(C), _np(labels), idx, kind,
              _typed(delta, x), out)
        return torch.from_numpy(out)
    m = X.shape[0] if rows is None else rows.shape[0]
    out = torch.empty(m, dtype=X.dtype, device=X.device)
    step = _row_chunk(m, X.shape[1], _budget(X) // 4)
    for s in range(0, m, step):
        e = min(m, s + step)
        block = X[s:e] if rows is None else X[rows[s:e]]
        out[s:e] = rho_torch(block - C[labels[s:e]], kind, delta).sum(1)
    return out


def weighted_sums(X, labels, k, weights=None):
    """Per-cluster sums of w_i * x_i and of w_i (w = 1 when ``weights`` is None).

    Returns (S (k, d), A (k,)); float64 on the numba path, X.dtype otherwise.
    """
    if numba_active(X):
        x = _np(X)
        use = weights is not None
        w = _np(weights).astype(np.float64, copy=False) if use else np.empty(0)
        chunks = _n_chunks(x.shape[0], x.size)
        S = np.zeros((chunks, k, x.shape[1]))
        A = np.zeros((chunks, k))
        _call(_nb_weighted_sums, x.size, x, _np(labels), w, use, S, A)
        return torch.from_numpy(S.sum(0)), torch.from_numpy(A.sum(0))
    n, d = X.shape
    S = torch.zeros((k, d), dtype=X.dtype, device=X.device)
    A = torch.zeros(k, dtype=X.dtype, device=X.device)
    rows = _row_chunk(n, d, _budget(X) // 4)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        lab = labels[s:e]
        if weights is None:
            S.index_add_(0, lab, X[s:e])
            A.index_add_(0, lab, torch.ones(e - s, dtype=X.dtype, device=X.device))
        else:
            w = weights[s:e].to(X.dtype)
            S.index_add_(0, lab, X[s:e] * w[:, None])
            A.index_add_(0, lab, w)
    return S, A


def radial_stats(X, C, labels, kind, param, tiny):
    """One pass of the radial majorize-minimize (weighted mean) updates.

    With r_i = ||x_i - c_{l_i}|| and weights a_i = exp(-r_i^2 / 2 sigma^2)
    (CORRENTROPY, ``param`` = sigma) or 1 / r_i (GEOMETRIC_MEDIAN) returns per
    cluster (S, A, E, L): S = sum a_i x_i, A = sum a_i, E = number of points
    within ``tiny`` of the center (weight 0; geometric median only) and L = the
    current loss sum.
    """
    if numba_active(X):
        x = _np(X)
        chunks = _n_chunks(x.shape[0], x.size)
        S = np.zeros((chunks, C.shape[0], x.shape[1]))
        st = np.zeros((chunks, 3, C.shape[0]))
        _call(_nb_radial_stats, x.size, x, _np(C), _np(labels), kind, float(param), float(tiny),
              S, st)
        st = torch.from_numpy(st.sum(0))
        return torch.from_numpy(S.sum(0)), st[0], st[1], st[2]
    n, d = X.shape
    k = C.shape[0]
    S = torch.zeros((k, d), dtype=X.dtype, device=X.device)
    st = torch.zeros((3, k), dtype=X.dtype, device=X.device)
    rows = _row_chunk(n, d, _budget(X) // 4)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        lab = labels[s:e]
        d2 = ((X[s:e] - C[lab]) ** 2).sum(1)
        if kind == CORRENTROPY:
            a = torch.exp(-d2 / (2.0 * param * param))
            pinned, loss = torch.zeros_like(d2), 1.0 - a
        else:
            r = d2.sqrt()
            far = r > tiny
            a = torch.where(far, 1.0 / torch.where(far, r, torch.ones_like(r)), 0.0)
            pinned, loss = (~far).to(X.dtype), r
        S.index_add_(0, lab, X[s:e] * a[:, None])
        st.index_add_(1, lab, torch.stack([a, pinned, loss]))
    return S, st[0], st[1], st[2]


def epsilon_stats(X, C, labels, eps, tiny):
    """Anisotropic quadratic majorizer of sum_i max(0, ||x_i - mu|| - eps) at mu = C.

    Per sample with v = x - mu, r = ||v||, n = v / r the surrogate is tight at
    mu and has curvature c_t (I - n n^T) + c_r n n^T (times 2): outside the
    tube c_t = 1/(2r), c_r = max(1/(2r), 1/(4(r - eps))); inside it
    c_t = 1/(2 eps), c_r = eps / (2 (eps^2 - r^2)) (points within ``tiny`` of
    the tube's surface count as inside at depth ``tiny``). Inside points thus
    only resist moving *radially* out of their tube, not sliding along it.

    Returns (G, alpha, L, b): G = sum_out v / r (minus the loss's gradient),
    alpha = sum 2 c_t, L = current loss per cluster (float64), and per sample
    b = 2 (c_r - c_t) / r^2, so the Hessian applied to P_j is
    alpha_j P_j + sum_i b_i (v_i . P_j) v_i (see :func:`lowrank_matvec`).
    """
    n = X.shape[0]
    if numba_active(X):
        x = _np(X)
        chunks = _n_chunks(n, x.size)
        G = np.zeros((chunks, C.shape[0], x.shape[1]), dtype=x.dtype)
        st = np.zeros((chunks, 2, C.shape[0]))
        b = np.zeros(n)
        _call(_nb_epsilon_stats, x.size, x, _np(C).astype(x.dtype, copy=False), _np(labels),
              float(eps), float(tiny), G, st, b)
        st = torch.from_numpy(st.sum(0))
        return torch.from_numpy(G.sum(0, dtype=np.float64)), st[0], st[1], torch.from_numpy(b)
    d = X.shape[1]
    k = C.shape[0]
    G = torch.zeros((k, d), dtype=X.dtype, device=X.device)
    st = torch.zeros((2, k), dtype=X.dtype, device=X.device)
    b = torch.empty(n, dtype=X.dtype, device=X.device)
    rows = _row_chunk(n, d, _budget(X) // 4)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        lab = labels[s:e]
        v = X[s:e] - C[lab].to(X.dtype)
        d2 = (v * v).sum(1)
        r = d2.sqrt()
        out = r > eps + tiny
        inv = torch.where(out, 1.0 / torch.where(out, r, torch.ones_like(r)), 0.0)
        depth = (eps - r).clamp(min=tiny)
        radial_out = torch.maximum(0.5 * inv, 0.25 / torch.where(out, r - eps, torch.ones_like(r)))
        radial_in = eps / (2.0 * depth * (2.0 * eps - depth))
        c_t = torch.where(out, 0.5 * inv, torch.full_like(r, 0.5 / eps))
        c_r = torch.where(out, radial_out, radial_in)
        safe_d2 = torch.where(d2 > 0, d2, torch.ones_like(d2))
        b[s:e] = torch.where(d2 > 0, 2.0 * (c_r - c_t) / safe_d2, 0.0)
        G.index_add_(0, lab, v * inv[:, None])
        st.index_add_(1, lab, torch.stack([2.0 * c_t, (r - eps).clamp(min=0)]))
    return G, st[0], st[1], b


def lowrank_matvec(X, C, labels, rows, b, P):
    """sum over ``rows`` i of b_i ((x_i - c_j) . P_j) (x_i - c_j), per cluster j = labels_i
    (in P's dtype; on the numba path computed in X's)."""
    if numba_active(X):
        x = _np(X)
        work = rows.shape[0] * x.shape[1]
        chunks = _n_chunks(max(1, rows.shape[0]), work)
        out = np.zeros((chunks,) + tuple(P.shape), dtype=x.dtype)
        _call(_nb_lowrank_matvec, work, x, _np(C).astype(x.dtype, copy=False), _np(labels),
              _np(rows), _np(b), _np(P).astype(x.dtype, copy=False), out)
        return torch.from_numpy(out.sum(0, dtype=np.float64)).to(P.dtype)
    out = torch.zeros_like(P)
    step = _row_chunk(rows.shape[0], X.shape[1], _budget(X) // 4)
    for s in range(0, rows.shape[0], step):
        idx = rows[s:s + step]
        lab = labels[idx]
        v = X[idx].to(P.dtype) - C[lab].to(P.dtype)
        out.index_add_(0, lab, v * (b[idx].to(P.dtype) * (v * P[lab]).sum(1))[:, None])
    return out


def coord_centers(X, labels, prev, kind, delta, max_iter=100, xtol=1e-10):
    """Per-cluster, per-coordinate minimizers of sum_i rho(x_it - mu_t).

    ABS: exact coordinate-wise median (mean of the two middle values for even
    counts). HUBER / PSEUDO_HUBER: root of sum_i psi(x_it - mu_t) = 0 by
    bracketed Newton from ``prev`` (finite and exact for Huber's
    piecewise-linear psi). Empty clusters keep ``prev``.
    """
    if kind == ABS:
        if numba_active(X):
            return _numba_medians(X, labels, prev)
        return _torch_medians(X, labels, prev)
    return _m_estimates(X, labels, prev, kind, delta, max_iter, xtol)


#: floats of a median task's transposed copy (2 MB of float32, a core's L2):
#: a cluster's columns are copied in groups of about this many values
_MEDIAN_TASK = 1 << 19


def _numba_medians(X, labels, prev):
    x, lab = _np(X), _np(labels)
    k = prev.shape[0]
    d = x.shape[1]
    perm = np.empty(lab.shape[0], dtype=np.int64)
    offsets = np.empty(k + 1, dtype=np.int64)
    _nb_group(lab, k, perm, offsets)
    out = _np(prev).astype(x.dtype, copy=True)  # empty clusters keep their center
    # tasks: (cluster, first column, width): a cluster's columns in equal groups
    # of at most _MEDIAN_TASK values, of at least 16 columns (a cache line of a row)
    counts = np.diff(offsets)
    clusters = np.flatnonzero(counts)
    groups = -(-d // np.maximum(16, _MEDIAN_TASK // counts[clusters]))
    width = 16 * -(-d // (16 * groups))
    per_cluster = -(-d // width)
    task_cluster = np.repeat(clusters, per_cluster)
    first = np.repeat(np.cumsum(per_cluster) - per_cluster, per_cluster)
    task_width = np.repeat(width, per_cluster)
    task_col = (np.arange(task_cluster.size) - first) * task_width
    task_width = np.minimum(task_width, d - task_col)
    tasks = [t.astype(np.int64) for t in (task_cluster, task_col, task_width)]
    _call(_nb_medians, 16 * x.size, x, perm, offsets, *tasks,
          max(1, min(task_cluster.size, numba.get_num_threads())), out)
    return torch.from_numpy(out)


def _torch_medians(X, labels, prev):
    """Exact medians by sorting each block of columns grouped by cluster. float32
    values sort in one pass as int64 keys (label << 32 | order-preserving bits)."""
    n, d = X.shape
    k = prev.shape[0]
    counts = torch.bincount(labels, minlength=k)
    offsets = torch.cumsum(counts, 0) - counts
    lower = (offsets + (counts - 1).clamp(min=0) // 2).clamp(max=n - 1)
    upper = (offsets + counts // 2).clamp(max=n - 1)
    out = prev.clone()
    filled = counts > 0
    cols = max(1, min(d, _budget(X) // (4 * n)))
    high = labels.to(torch.int64)[:, None] << 32
    for c in range(0, d, cols):
        block = X[:, c:c + cols]
        if X.dtype == torch.float32:
            bits = block.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
            ordered = torch.where(bits >= 1 << 31, 0xFFFFFFFF - bits, bits + (1 << 31))
            low = torch.sort(high + ordered, dim=0).values & 0xFFFFFFFF
            bits = torch.where(low >= 1 << 31, low - (1 << 31), 0xFFFFFFFF - low)
            grouped = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
            grouped = grouped.view(torch.float32)
        else:
            values, idx = torch.sort(block, dim=0, stable=True)
            grouped = values.gather(0, torch.sort(labels[idx], dim=0, stable=True).indices)
        median = 0.5 * (grouped[lower] + grouped[upper])
        out[filled, c:c + cols] = median[filled]
    return out


def _psi_torch(r, kind, delta):
    if kind == HUBER:
        return r.clamp(-delta, delta), (r.abs() <= delta).to(r.dtype)
    s = torch.rsqrt(1.0 + r * r / (delta * delta))
    return r * s, s * s * s


def _m_estimates(X, labels, prev, kind, delta, max_iter, xtol):
    """Bracketed Newton on all (cluster, column) roots at once; every iteration is
    one streaming pass over X (numba kernel on CPU, chunked index_add otherwise)."""
    n, d = X.shape
    if numba_active(X):
        x, lab = _np(X), _np(labels)
        shape = (_n_chunks(n, 4 * x.size),) + tuple(prev.shape)

        def sums(mu, bounds=False, done=None):
            g = np.zeros(shape)
            h = np.zeros(shape)
            active = None if done is None else ~_np(done)
            if active is not None and active.mean() < _SPARSE_NEWTON:
                # most roots found: only the unfinished (cluster, column) pairs
                j, t = np.nonzero(active)
                ptr = np.zeros(shape[1] + 1, dtype=np.int64)
                np.cumsum(np.bincount(j, minlength=shape[1]), out=ptr[1:])
                rows = np.flatnonzero(active.any(1)[lab])
                _call(_nb_psi_sums_active, 4 * rows.size * max(1, t.size // shape[1]), x,
                      rows, lab, _np(mu), kind, float(delta), ptr, t, g, h)
                return torch.from_numpy(g.sum(0)), torch.from_numpy(h.sum(0))
            lo = np.full(shape, np.inf) if bounds else g
            hi = np.full(shape, -np.inf) if bounds else h
            _call(_nb_psi_sums, 4 * x.size, x, lab, _np(mu), kind, float(delta), g, h, lo, hi,
                  bounds)
            out = torch.from_numpy(g.sum(0)), torch.from_numpy(h.sum(0))
            if bounds:
                out += torch.from_numpy(lo.min(0)), torch.from_numpy(hi.max(0))
            return out

        prev = prev.double()
    else:
        rows = _row_chunk(n, d, _budget(X) // 4)

        def sums(mu, bounds=False, done=None):
            g = torch.zeros_like(mu)
            h = torch.zeros_like(mu)
            for s in range(0, n, rows):
                lab = labels[s:s + rows]
                psi, dpsi = _psi_torch(X[s:s + rows] - mu[lab], kind, delta)
                g.index_add_(0, lab, psi)
                h.index_add_(0, lab, dpsi)
            if not bounds:
                return g, h
            index = labels[:, None].expand(n, d)
            lo = torch.full_like(mu, math.inf).scatter_reduce_(0, index, X, "amin")
            hi = torch.full_like(mu, -math.inf).scatter_reduce_(0, index, X, "amax")
            return g, h, lo, hi

    mu = prev.clone()
    g, h, lo, hi = sums(mu, bounds=True)
    filled = torch.isfinite(lo)
    lo = torch.where(filled, lo, prev)
    hi = torch.where(filled, hi, prev)
    inside = (prev >= lo) & (prev <= hi)
    mu = torch.minimum(torch.maximum(prev, lo), hi)
    if not bool(inside.all()):
        g, h = sums(mu)
    tol = xtol * (hi - lo) + 4 * torch.finfo(X.dtype).eps * torch.maximum(lo.abs(), hi.abs())
    done = hi <= lo
    for it in range(max_iter):
        if it:
            g, h = sums(mu, done=done)
        done |= g == 0
        lo = torch.where(g > 0, mu, lo)
        hi = torch.where(g < 0, mu, hi)
        step = g / torch.where(h > 0, h, torch.ones_like(h))
        newton = mu + step
        # a tiny Newton step is accepted as is (at the root rounding may put it on
        # the bracket's edge); otherwise bisect when Newton leaves the bracket, and
        # every other iteration after 20 so that termination is guaranteed
        final = (h > 0) & (step.abs() <= tol)
        bisect = (h <= 0) | (newton <= lo) | (newton >= hi) | (it >= 20 and it % 2 == 1)
        mu = torch.where(done, mu, torch.where(final | ~bisect, newton, 0.5 * (lo + hi)))
        done |= final | (hi - lo <= tol)
        if bool(done.all()):
            break
    return mu.to(X.dtype)
