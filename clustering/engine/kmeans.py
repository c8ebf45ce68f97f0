"""Generalized k-means: Lloyd iterations under any registered loss.

Each iteration assigns every sample to the center of smallest loss and then
moves every center to (or, for iterative solvers, towards) the minimizer of its
cluster's summed loss, so the objective never increases. Assignment is exact
and chunked (memory O(n d + k d + chunk k); the Elkan bounds below, when kept,
take no more than X itself or 256 MB):

* euclidean losses (squared, correntropy, epsilon-insensitive, geometric
  median): nearest center by a chunked GEMM, since these losses are
  nondecreasing in the Euclidean distance;
* cosine: the same GEMM against unit-norm centers (the largest dot product is
  the nearest unit center);
* coordinate-wise losses (absolute, huber, pseudo-huber): fused kernels (numba
  on CPU, triton on CUDA);
* any other loss: chunked ``Loss.pairwise``.

Exact bound pruning (``prune``) skips losses that bounds prove cannot change a
sample's center: for coordinate-wise losses rho is G-Lipschitz per coordinate,
so |L(x, c) - L(x, c')| <= G ||c - c'||_1; for euclidean losses the triangle
inequality bounds the change of the distance. On the numba path,
coordinate-wise losses keep Elkan's bound per (sample, center) when that
matrix fits (``_ELKAN_MAX_BYTES``): after the first iterations only a few
percent of the pairs are computed, even where clusters overlap. Otherwise
Hamerly's single lower bound per sample skips whole rows. Center updates only
revisit clusters whose members changed.

Robust losses (``Loss.robust``) are seeded so that far outliers do not take
centers (``_Engine._robust_seeding``), and a data-driven ``loss_param`` is
re-estimated from the residuals as the centers settle, far outliers left out
(``GeneralizedKMeans._default_param``); bench/README.md has the evidence.
"""

import functools
import inspect
import math
import warnings

import numpy as np
import torch

from . import _kernels as K
from .kernel_cache import ensure_ready
from .losses import OUTLIER_DISTANCES, get_loss

__all__ = ["GeneralizedKMeans", "NotFittedError"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# iterative center solvers (majorize-minimize / Newton) inside one Lloyd iteration
_INNER_MAX_ITER = 100
_INNER_TOL = 1e-6
# prune="auto" prunes euclidean losses on CPU from this many clusters on: the
# bound upkeep costs about one O(n d) pass per iteration, the GEMM k of them
_PRUNE_MIN_CLUSTERS = 64
# euclidean pruning does a plain full pass (which renews the bounds) when the
# bounds fail for more than this fraction of the samples
_UNBOUND_FRACTION = 0.5
# coordinate-wise pruning keeps Elkan's (n, k) bounds when they take at most
# this many bytes, or no more than X itself
_ELKAN_MAX_BYTES = 1 << 28
# ... and renews them all with a full tiled pass (cheaper per loss) after a scan
# that had to compute more than this fraction of the pairs
_ELKAN_FULL_FRACTION = 0.8
# a pilot fit on a uniform sample of this many samples (or this many per cluster)
# sets a data-driven loss_param, re-estimated until it changes by less than this
# fraction (at most this many rounds); each estimate reads the residuals of
# max(this many rows, this many values) of the pilot (evenly spaced rows; the
# median of 1,000 row norms or of 2^18 coordinates is within about 2% of the
# full one; None: every row). bench/bench_engine.py --estimate compares them
# with those of before: 10,000 samples, 10 per cluster, every row
_PILOT_SAMPLES, _PILOT_SAMPLES_PER_CLUSTER = 5_000, 100
_PARAM_RTOL = 0.05
_PARAM_ROUNDS = 5
_PARAM_ROWS, _PARAM_VALUES = 1_000, 1 << 18
# CPU blocks of the (rows, k) loss matrix: about this many elements (2 MB of
# float32, cache-sized), >= this many rows
_CPU_BLOCK, _MIN_CPU_ROWS = 1 << 19, 2048
_SEEDING_SHARE = 0.1  # share of a restart's progress given to seeding
# k-means++ seeds on a uniform sample of this many rows (or this many per
# cluster, whichever is more) when n is larger: its k greedy steps cost
# O(n k d) each otherwise, most of a large fit's time, for seeds of the same
# quality (bench/README.md, "Scale")
_SEED_SAMPLES, _SEED_SAMPLES_PER_CLUSTER = 100_000, 100
# robust seeding (see _Engine._robust_seeding): candidates drawn per step, the
# samples of the probe that screens them, local-search swaps per center
_SCREENED = 8
_PROBE_SAMPLES = 512
_SWAPS_PER_CENTER = 1


def _swap_costs(losses, best, second, label, k):
    """(k, m) summed loss of the samples when chosen center j is replaced by
    candidate c, from their (n, m) ``losses`` to the candidates and their best
    (center ``label``) and second-best losses: j's members fall back to
    min(second-best, candidate), the others to min(best, candidate)."""
    kept = torch.minimum(losses, best[:, None])
    lost = torch.minimum(losses, second[:, None]) - kept
    delta = torch.zeros((k, losses.shape[1]), dtype=losses.dtype, device=losses.device)
    return kept.sum(0)[None, :] + delta.index_add_(0, label, lost)


def _capped_draw(best, count, rng, rows=slice(None)):
    """``count`` sample indices drawn proportionally to ``best`` capped at the
    median of ``best[rows]`` (uncapped where it is 0); None when every loss is 0."""
    cap = float(best[rows].median())
    weights = best.clamp(max=cap) if cap > 0 else best
    cumulative = torch.cumsum(weights, 0)
    potential = float(cumulative[-1])
    if not (potential > 0 and math.isfinite(potential)):
        return None
    targets = torch.as_tensor(rng.random(count) * potential, device=best.device)
    return torch.searchsorted(cumulative, targets, right=True).clamp_(max=best.shape[0] - 1)


class NotFittedError(ValueError, AttributeError):
    """Raised when a GeneralizedKMeans is used before ``fit``."""


def _resolve_device(device, X):
    if device is None or device == "auto":
        if isinstance(X, torch.Tensor) and X.device.type != "cpu":
            return X.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_dtype(dtype):
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[name]


def _as_tensor(X, device, dtype, what="X"):
    """2-D, finite, contiguous tensor on ``device`` (never modifies the input)."""
    if isinstance(X, torch.Tensor):
        X = X.detach()
    else:
        X = np.asarray(X)
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            raise ValueError(f"{what} must be a numeric array, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of shape (n_samples, n_features), "
                         f"got shape {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{what} must have at least one sample and one feature, "
                         f"got shape {tuple(X.shape)}")
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    X = X.to(device=device, dtype=dtype).contiguous()
    if X.device.type == "cpu":
        finite = np.isfinite(X.numpy())
        ok = bool(finite.all())
    else:
        finite = torch.isfinite(X)
        ok = bool(finite.all())
    if not ok:
        bad = int((~finite).any(1).sum())
        raise ValueError(f"{what} contains NaN or infinity in {bad} of {X.shape[0]} rows")
    low, high = torch.aminmax(X)
    largest, limit = max(-float(low), float(high)), max_abs_value(X.shape[1], X.dtype)
    if largest > limit:
        raise ValueError(too_large_message(what, largest, limit, X.shape[1], X.dtype))
    return X


class FewerClustersWarning(UserWarning):
    """Fewer clusters were formed than asked for (fewer distinct points than k)."""


def max_abs_value(d, dtype=torch.float32):
    """The largest absolute feature value whose squared distances over ``d``
    dimensions stay well inside ``dtype``'s range (a 16x margin for sums)."""
    return math.sqrt(torch.finfo(dtype).max / (16.0 * d))


def too_large_message(what, largest, limit, d, dtype=torch.float32):
    return (
        f"{what} holds values up to {largest:.3g} in absolute value, beyond the {limit:.3g} "
        f"that {str(dtype).removeprefix('torch.')} distance arithmetic over {d} dimensions "
        "allows (squared distances would overflow); rescale the features, for example "
        "L2-normalize them"
    )


def _rows_per_block(device, k):
    """Default rows per block of an (rows, k) matrix: about ``_CPU_BLOCK``
    elements on CPU, 65536 rows on a GPU."""
    if device.type != "cpu":
        return 1 << 16
    return max(_MIN_CPU_ROWS, _CPU_BLOCK // max(1, k))


def _unit_rows(C):
    """(C with its nonzero rows scaled to unit norm, which rows are nonzero)."""
    norms = C.norm(dim=1)
    nonzero = norms > 0
    return C / torch.where(nonzero, norms, torch.ones_like(norms))[:, None], nonzero


def _make_rng(random_state):
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**32 - 1))
    return np.random.default_rng(random_state)


class _Progress:
    """Maps (restart, fraction of that restart) to the user's progress(fraction, message)."""

    def __init__(self, callback, n_init):
        self.callback = callback
        self.n_init = n_init

    def __call__(self, restart, fraction, message):
        if self.callback is not None:
            total = (restart + min(max(fraction, 0.0), 1.0)) / self.n_init
            self.callback(min(1.0, total), message)


class _Result:
    def __init__(self, centers, labels, objective, history):
        self.centers = centers
        self.labels = labels
        self.objective = objective
        self.history = history


class _Engine:
    """Loss-aware assignment, seeding and Lloyd iterations on one data tensor."""

    def __init__(self, X, loss, param, chunk_size=None, prune=False):
        self.X = X
        self.loss = loss
        self.param = param
        self.geometry = loss.geometry
        n = X.shape[0]
        if self.geometry == "coordinatewise" and getattr(loss, "kind", None) is None:
            self.geometry = None  # custom coordinate-wise loss: generic path
        self.bounded = bool(prune) and self.geometry in ("coordinatewise", "euclidean")
        if getattr(loss, "kind", None) == K.PSEUDO_HUBER:
            tiny = torch.finfo(X.dtype).tiny
            if not loss._delta(param) ** 2 >= tiny:  # the kernels' terms sqrt(delta^2 + r^2)
                raise ValueError(
                    f"loss_param (delta of loss 'pseudo_huber') = {loss._delta(param):g} is "
                    f"too small for {str(X.dtype).replace('torch.', '')} arithmetic: delta^2 "
                    f"must be at least {tiny:g}; rescale the data or use dtype='float64'")
        self.chunk_size = chunk_size
        default = _MIN_CPU_ROWS if X.device.type == "cpu" else 1 << 16
        self.chunk = max(1, min(n, int(chunk_size or default)))
        if self.geometry in ("euclidean", "cosine"):
            self.x_sqnorm = K.row_sqnorms(X)
        if self.geometry == "cosine":
            norms = self.x_sqnorm.sqrt()
            self.inv_norm = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
        self._lower = None  # Hamerly lower bounds on the second-best bound value
        self._upper = None  # bound value to the own center (euclidean: an upper bound)
        self._bounds = None  # Elkan: (n, k) loss + drift at the time it was computed
        self._drift = None  # Elkan: (k,) float64 cumulative shift bound of each center
        self._scanned = 0.0  # Elkan: fraction of the pairs the last scan computed

    @functools.cached_property
    def scale(self):
        """max |x|: the data's scale, for the iterative solvers' tolerances."""
        return float(torch.maximum(self.X.max(), -self.X.min()))

    def _scale_if_used(self):
        return self.scale if self.loss.uses_scale else None

    # ---------------------------------------------------------------- losses
    def losses_to(self, C):
        """(n, m) loss of every sample to each row of C (m small or chunked over rows)."""
        X, loss, param = self.X, self.loss, self.param
        if self.geometry == "coordinatewise":
            return loss.pairwise(X, C, param)
        n = X.shape[0]
        out = torch.empty((n, C.shape[0]), dtype=X.dtype, device=X.device)
        rows = self._rows_per_chunk(C.shape[0])
        if self.geometry == "cosine":
            Cu, _ = _unit_rows(C)
        for s in range(0, n, rows):
            e = min(n, s + rows)
            if self.geometry == "euclidean":
                d2 = K.sqeuclidean_pairwise(X[s:e], C, self.x_sqnorm[s:e])
                out[s:e] = loss.from_sqdist(d2, param)
            elif self.geometry == "cosine":
                out[s:e] = 1.0 - (X[s:e] @ Cu.T) * self.inv_norm[s:e, None]
            else:
                out[s:e] = loss.pairwise(X[s:e], C, param)
        return out

    def _rows_per_chunk(self, k):
        """Rows per block of an (rows, k) loss matrix."""
        if self.geometry is None:  # default Loss.pairwise forms (rows, k, d)
            per_row = max(1, k * self.X.shape[1])
            return max(1, min(self.chunk, K._budget(self.X) // per_row))
        if self.chunk_size is not None:
            return self.chunk
        return max(1, min(self.X.shape[0], _rows_per_block(self.X.device, k)))

    def exact_losses(self, C, labels):
        """(n,) loss of each sample to its assigned center, computed directly."""
        X, loss, param = self.X, self.loss, self.param
        if self.geometry == "euclidean":
            return loss.from_sqdist(K.rowwise_loss(X, C, labels, K.SQUARED), param)
        if self.geometry == "coordinatewise":
            return K.rowwise_loss(X, C, labels, loss.kind, loss._delta(param))
        n = X.shape[0]
        out = torch.empty(n, dtype=X.dtype, device=X.device)
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            out[s:e] = loss.loss(X[s:e], C[labels[s:e]], param)
        return out

    # ------------------------------------------------------------ assignment
    # Bound-based pruning (Hamerly) works on a "bound value" b(x, c) with
    # |b(x, c) - b(x, c')| <= shift(c, c'): the loss itself for coordinate-wise
    # losses (shift = G ||c - c'||_1, rho being G-Lipschitz) and the Euclidean
    # distance for euclidean losses (shift = ||c - c'||), whose loss is a
    # nondecreasing function of it.
    def _exact(self, C, labels, rows=None):
        """Exact bound value of X[rows] (all rows if None) to their ``labels`` centers."""
        if self.geometry == "euclidean":
            return K.rowwise_loss(self.X, C, labels, K.SQUARED, rows=rows).sqrt()
        return K.rowwise_loss(self.X, C, labels, self.loss.kind, self.loss._delta(self.param),
                              rows=rows)

    def _coord_pass(self, C, rows=None, bounds=None):
        """Full coordinate-wise assignment of X[rows] (all rows if None):
        (labels, loss to the own center, second-best loss); every loss also
        goes to ``bounds`` when given (see ``K.coord_assign``)."""
        kind = self.loss.kind
        labels, best, second = K.coord_assign(self.X, C, kind, self.loss._delta(self.param), rows,
                                              bounds)
        if kind == K.PSEUDO_HUBER:  # the CPU kernel ranks by a cheaper, less accurate form
            best = self._exact(C, labels, rows)
        return labels, best, second

    def _elkan(self, k):
        """Whether coordinate-wise pruning keeps Elkan's (n, k) bounds."""
        X = self.X
        size = X.shape[0] * k * X.element_size()
        return (self.geometry == "coordinatewise" and k > 1 and K.numba_active(X)
                and X.shape[1] > K._LANES_MAX_D
                and size <= max(_ELKAN_MAX_BYTES, X.numel() * X.element_size()))

    def _elkan_full(self, C):
        """Full coordinate-wise assignment that renews every Elkan bound: (labels, losses)."""
        n, k = self.X.shape[0], C.shape[0]
        if self._bounds is None or self._bounds.shape[1] != k:
            self._bounds = np.empty((n, k), dtype=self.X.numpy().dtype)
        labels, losses, _ = self._coord_pass(C, bounds=self._bounds)
        self._drift = np.zeros(k)
        self._scanned = 0.0
        return labels, losses

    def _elkan_pass(self, C, labels):
        """Elkan's pruned assignment from ``labels`` with the current bounds: (labels, losses)."""
        labels, best, pairs = K.coord_scan(self.X, C, labels, self._bounds, self._drift,
                                           self.loss.kind, self.loss._delta(self.param))
        self._scanned = pairs / max(1, self.X.shape[0] * (C.shape[0] - 1))
        return labels, best

    def _top2(self, C, rows=None):
        """Euclidean (nearest center, lower bound on the second-nearest distance) of X[rows]."""
        labels, _, second = K.sqeuclidean_nearest(self.X, C, self.x_sqnorm,
                                                  self._rows_per_chunk(C.shape[0]), rows,
                                                  second=True)
        return labels, (second - self._gemm_margin(C, rows)).clamp(min=0).sqrt()

    def _gemm_margin(self, C, rows=None):
        """Bound on the cancellation error ~eps * (|x|^2 + |c|^2) of GEMM distances."""
        x_sqnorm = self.x_sqnorm if rows is None else self.x_sqnorm[rows]
        return 8 * torch.finfo(self.X.dtype).eps * (x_sqnorm + (C * C).sum(1).max())

    def _euclidean_pass(self, C):
        """Full GEMM assignment that also renews the euclidean bounds: (labels, losses)."""
        labels, d2, second = K.sqeuclidean_nearest(self.X, C, self.x_sqnorm,
                                                   self._rows_per_chunk(C.shape[0]),
                                                   second=True)
        margin = self._gemm_margin(C)
        self._upper = (d2 + margin).sqrt()
        self._lower = (second - margin).clamp(min=0).sqrt()
        return labels, self.loss.from_sqdist(d2, self.param)

    def _bound_to_loss(self, values):
        if self.geometry == "euclidean":
            return self.loss.from_sqdist(values * values, self.param)
        return values

    def assign(self, C):
        """Exact nearest center for every sample: (labels, losses)."""
        X, loss, param = self.X, self.loss, self.param
        n = X.shape[0]
        if self.bounded and self.geometry == "euclidean":
            return self._euclidean_pass(C)
        if self.bounded and self._elkan(C.shape[0]):
            return self._elkan_full(C)
        self._bounds = None
        if self.bounded:
            labels, self._upper, self._lower = self._coord_pass(C)
            return labels, self._upper
        if self.geometry == "euclidean":
            labels, d2, _ = K.sqeuclidean_nearest(X, C, self.x_sqnorm,
                                                  self._rows_per_chunk(C.shape[0]))
            return labels, loss.from_sqdist(d2, param)
        if self.geometry == "cosine":
            Cu, nonzero = _unit_rows(C)
            if bool(nonzero.all()):
                # unit centers: the largest x . c is the nearest c, |x - c|^2 = |x|^2 + 1 - 2 x . c
                labels, d2, _ = K.sqeuclidean_nearest(X, Cu, self.x_sqnorm,
                                                      self._rows_per_chunk(C.shape[0]))
                zero = self.inv_norm == 0  # loss 1 to every center: the first one
                return (labels.masked_fill_(zero, 0),
                        1.0 - 0.5 * (self.x_sqnorm + 1.0 - d2) * self.inv_norm)
        labels = torch.empty(n, dtype=torch.int64, device=X.device)
        losses = torch.empty(n, dtype=X.dtype, device=X.device)
        rows = self._rows_per_chunk(C.shape[0])
        for s in range(0, n, rows):
            e = min(n, s + rows)
            if self.geometry == "cosine":
                sim, labels[s:e] = torch.max(X[s:e] @ Cu.T, dim=1)
                losses[s:e] = 1.0 - sim * self.inv_norm[s:e]
            else:
                losses[s:e], labels[s:e] = torch.min(loss.pairwise(X[s:e], C, param), dim=1)
        return labels, losses

    def reassign(self, C_old, C_new, labels, moved):
        """Assignment after the centers moved from C_old to C_new.

        With pruning, the previous labels and lower bounds are reused. Elkan
        (coordinate-wise losses, see ``_elkan``): each center's drift grows by
        its shift bound and only the pairs whose bound falls below the best
        loss get computed. Hamerly: exact bound values to the current centers
        are computed for all samples (O(n d)), lower bounds drop by the largest
        shift of another center, and only samples whose bound value exceeds
        their lower bound get a full row (O(k d)). ``moved`` are samples
        relabeled by empty-cluster reseeding.
        Euclidean losses first test the moved upper bounds: when they fail for
        most samples (overlapping clusters, early iterations) one plain GEMM pass,
        whose top-2 renews the bounds, is cheaper than an exact pass plus a top-2.
        """
        if not self.bounded:
            return self.assign(C_new)
        if self.geometry == "euclidean":
            shift = (C_new - C_old).norm(dim=1)
        else:
            shift = (C_new - C_old).abs().sum(1) * self.loss.lipschitz(self.param)
        if self._bounds is not None:  # Elkan (reseeded centers moved by their whole jump)
            if self._scanned > _ELKAN_FULL_FRACTION:
                return self._elkan_full(C_new)
            self._drift += shift.double().numpy()
            return self._elkan_pass(C_new, labels)
        if shift.numel() > 1:
            top, arg = torch.topk(shift, 2)
            decrease = torch.where(labels == arg[0], top[1], top[0])
        else:
            decrease = shift.index_select(0, labels)
        lower = self._lower - decrease
        if moved is not None:
            lower[moved] = -math.inf
        moved_upper = self._upper + shift.index_select(0, labels)
        if int((moved_upper > lower).sum()) > _UNBOUND_FRACTION * labels.numel():
            if self.geometry == "euclidean":
                return self._euclidean_pass(C_new)
            labels, self._upper, self._lower = self._coord_pass(C_new)
            return labels, self._upper
        upper = self._exact(C_new, labels)
        rows = torch.nonzero(upper > lower).flatten()
        if rows.numel():
            if self.geometry == "euclidean":
                lab, second = self._top2(C_new, rows)
                upper[rows] = self._exact(C_new, lab, rows)
            else:
                lab, upper[rows], second = self._coord_pass(C_new, rows)
            labels[rows] = lab
            lower[rows] = second
        self._lower = lower
        self._upper = upper
        return labels, self._bound_to_loss(upper)

    # --------------------------------------------------------------- seeding
    def _seed_losses(self, C):
        """(n, m) float64 loss of every sample to each of a few candidate centers C
        (euclidean losses on the numba path: direct differences, no GEMM)."""
        if self.geometry == "euclidean" and K.numba_active(self.X):
            d2 = K.coord_pairwise(self.X, C, K.SQUARED, 1.0).double()
            return self.loss.from_sqdist(d2, self.param)
        return self.losses_to(C).double()

    def _subset(self, rows):
        """An engine on the samples X[rows] (same loss and parameter)."""
        return _Engine(self.X[rows], self.loss, self.param, self.chunk_size)

    def kmeans_plusplus(self, k, rng, n_trials=None):
        """Greedy k-means++ under the loss: each new center is the best of
        ``n_trials`` samples drawn proportionally to their loss to the nearest
        chosen center (robust losses: see ``_robust_seeding``). Above
        ``_SEED_SAMPLES`` rows it seeds on a uniform sample of them."""
        X = self.X
        n = X.shape[0]
        sample_size = max(_SEED_SAMPLES, _SEED_SAMPLES_PER_CLUSTER * k)
        if n > sample_size:
            rows = torch.as_tensor(np.sort(rng.choice(n, sample_size, replace=False)),
                                   device=X.device)
            return self._subset(rows).kmeans_plusplus(k, rng, n_trials)
        trials = n_trials or 2 + int(math.log(k))
        if self.loss.robust:
            return self._robust_seeding(k, rng, trials)
        chosen = [int(rng.integers(n))]
        closest = self._seed_losses(X[chosen[0]:chosen[0] + 1])[:, 0].clamp_(min=0)
        cumulative = torch.cumsum(closest, 0)
        for _ in range(1, k):
            potential = float(cumulative[-1])
            if not (potential > 0 and math.isfinite(potential)):
                # every sample sits on a chosen center (duplicates): pick an unused one
                unused = np.setdiff1d(np.arange(n), np.asarray(chosen))
                j = int(rng.choice(unused))
                closest = torch.minimum(closest, self._seed_losses(X[j:j + 1])[:, 0])
                cumulative = torch.cumsum(closest, 0)
                chosen.append(j)
                continue
            targets = torch.as_tensor(rng.random(trials) * potential, device=X.device)
            candidates = torch.searchsorted(cumulative, targets, right=True).clamp_(max=n - 1)
            trial = torch.minimum(closest[:, None], self._seed_losses(X[candidates]))
            best = int(torch.argmin(trial.sum(0)))
            closest = trial[:, best].contiguous()
            cumulative = torch.cumsum(closest, 0)
            chosen.append(int(candidates[best]))
        return X[torch.as_tensor(chosen, device=X.device)].clone()

    def _robust_seeding(self, k, rng, trials):
        """Seeding for robust losses: greedy k-means++ whose draws are
        proportional to the loss to the nearest chosen center *capped* (see
        ``_capped_draw``), then ``_SWAPS_PER_CENTER * k`` local-search swaps.

        Uncapped, far outliers have the largest losses and take most draws, and
        a robust loss never pulls a center off an outlier, so the clusters it
        left unseeded stay merged. Capped, an outlier is drawn about as often as
        a sample of an unseeded cluster; what tells them apart is how much the
        summed loss drops with the candidate as a center (an outlier only
        lowers its own loss). So each step draws ``_SCREENED`` candidates,
        scores them on a probe of at most ``_PROBE_SAMPLES`` samples, and the
        best ``trials`` are scored on all samples (greedy k-means++). A swap
        (local search, Lattanzi & Sohler 2019) draws and screens candidates the
        same way and replaces the chosen center whose replacement by the best
        of them lowers the summed loss most, if any does: it moves a seed off
        an outlier or an over-seeded cluster to a cluster still unseeded.
        """
        X = self.X
        n = X.shape[0]
        probe = None  # (rows, engine on them): all samples for small n
        if n > _PROBE_SAMPLES:
            rows = torch.as_tensor(np.sort(rng.choice(n, _PROBE_SAMPLES, replace=False)),
                                   device=X.device)
            probe = rows, self._subset(rows)
        first = int(rng.integers(n))
        chosen = [first]
        best = self._seed_losses(X[first:first + 1])[:, 0].clamp_(min=0)
        label = torch.zeros(n, dtype=torch.int64, device=X.device)
        second = torch.full_like(best, math.inf)
        label2 = torch.full_like(label, -1)
        sampled = slice(None) if probe is None else probe[0]  # rows whose median caps the draws
        for j in range(1, k):
            candidates = _capped_draw(best, _SCREENED, rng, sampled)
            if candidates is None:  # every sample sits on a chosen center: pick an unused one
                unused = np.setdiff1d(np.arange(n), np.asarray(chosen))
                candidates = torch.as_tensor([int(rng.choice(unused))], device=X.device)
            pick, losses = self._best_candidate(candidates, probe, best, trials)
            self._insert_seed(losses, j, best, label, second, label2)
            chosen.append(pick)
        for _ in range(_SWAPS_PER_CENTER * k if k > 1 else 0):
            candidates = _capped_draw(best, _SCREENED, rng, sampled)
            if candidates is None:
                break
            rows, screen = (slice(None), self) if probe is None else probe
            screened = screen._seed_losses(X[candidates]).clamp_(min=0)
            costs = _swap_costs(screened, best[rows], second[rows], label[rows], k)
            j, c = divmod(int(torch.argmin(costs)), costs.shape[1])
            if not float(costs[j, c]) < float(best[rows].sum()) * (1 - 1e-9):
                continue  # no candidate lowers the (probe's) summed loss
            p = int(candidates[c])
            if probe is None:  # the screen was exact
                losses = screened[:, c].contiguous()
            else:
                losses = self._seed_losses(X[p:p + 1])[:, 0].clamp_(min=0)
                cost = _swap_costs(losses[:, None], best, second, label, k)[:, 0]
                j = int(torch.argmin(cost))
                if not float(cost[j]) < float(best.sum()) * (1 - 1e-9):
                    continue
            chosen[j] = p
            # samples whose best or second-best seed was j: recomputed against all seeds
            stale = torch.nonzero((label == j) | (label2 == j)).flatten()
            self._insert_seed(losses, j, best, label, second, label2)
            if stale.numel():
                C = X[torch.as_tensor(chosen, device=X.device)]
                top = torch.topk(self._subset(stale)._seed_losses(C).clamp_(min=0), 2, dim=1,
                                 largest=False)
                best[stale], second[stale] = top.values[:, 0], top.values[:, 1]
                label[stale], label2[stale] = top.indices[:, 0], top.indices[:, 1]
        return X[torch.as_tensor(chosen, device=X.device)].clone()

    def _best_candidate(self, candidates, probe, best, trials):
        """(index, losses of all samples to it) of the candidate that lowers the
        summed loss ``best`` most: the ``trials`` best on the ``probe`` (rows,
        engine on them; None: all samples) are scored on all samples."""
        if probe is not None:
            rows, screen = probe
            losses = screen._seed_losses(self.X[candidates]).clamp_(min=0)
            drop = (best[rows, None] - torch.minimum(best[rows, None], losses)).sum(0)
            candidates = candidates[torch.argsort(drop, descending=True)[:trials]]
        losses = self._seed_losses(self.X[candidates]).clamp_(min=0)
        pick = int(torch.argmin(torch.minimum(best[:, None], losses).sum(0)))
        return int(candidates[pick]), losses[:, pick].contiguous()

    @staticmethod
    def _insert_seed(losses, j, best, label, second, label2):
        """Updates (in place) each sample's best and second-best seed with seed
        ``j`` at ``losses``."""
        closer = losses < best
        runner = ~closer & (losses < second)
        second.copy_(torch.where(closer, best, torch.where(runner, losses, second)))
        label2.copy_(torch.where(closer, label, torch.where(runner, j, label2)))
        best.copy_(torch.where(closer, losses, best))
        label.copy_(torch.where(closer, j, label))

    # ------------------------------------------------------------ iterations
    def reseed_empty(self, labels, losses, C):
        """Move each empty cluster onto a sample of largest loss (if that lowers its loss)."""
        k = C.shape[0]
        empty = torch.nonzero(torch.bincount(labels, minlength=k) == 0).flatten()
        if empty.numel() == 0:
            return C, None
        values, idx = torch.topk(losses, min(empty.numel(), losses.shape[0]))
        own = self.loss.loss(self.X[idx], self.X[idx], self.param)
        better = values > own
        idx, own = idx[better], own[better]
        if idx.numel() == 0:
            return C, None
        targets = empty[: idx.numel()]
        C = C.clone()
        C[targets] = self.X[idx]
        labels[idx] = targets
        losses[idx] = own
        return C, idx

    def update_centers(self, labels, C, changed):
        """Center update restricted to the clusters flagged in ``changed`` (None: all).

        A cluster whose members did not change keeps its center: the update
        already solved (exactly, or to the inner tolerance) that same problem.
        """
        k = C.shape[0]
        if changed is not None:
            ids = torch.nonzero(changed).flatten()
            if ids.numel() == 0:
                return C
            rows = torch.nonzero(changed.index_select(0, labels)).flatten() if ids.numel() < k else None
            if rows is not None and rows.numel() < self.X.shape[0] // 2:
                compact = torch.full((k,), -1, dtype=torch.int64, device=C.device)
                compact[ids] = torch.arange(ids.numel(), device=C.device)
                sub = self.loss.update_centers(
                    self.X[rows], compact[labels[rows]], C[ids], self.param,
                    max_iter=_INNER_MAX_ITER, tol=_INNER_TOL, scale=self._scale_if_used())
                C = C.clone()
                C[ids] = sub.to(C.dtype)
                return C
        return self.loss.update_centers(self.X, labels, C, self.param, max_iter=_INNER_MAX_ITER,
                                        tol=_INNER_TOL, scale=self._scale_if_used())

    def run(self, C, max_iter, tol, report, restart, verbose=False):
        """Lloyd iterations from centers C; returns a _Result."""
        labels, losses = self.assign(C)
        objective = float(losses.sum(dtype=torch.float64))
        history = []
        changed = None  # clusters whose members changed since their last update
        for it in range(1, max_iter + 1):
            C_old = C
            C, moved = self.reseed_empty(labels, losses, C)
            if moved is not None:
                changed = None
            previous = labels.clone()
            C = self.update_centers(labels, C, changed)
            labels, losses = self.reassign(C_old, C, labels, moved)
            # clusters a sample joined or left (index_add_: no boolean-mask gathers)
            switched = (labels != previous).to(torch.int32)
            moves = torch.zeros(C.shape[0], dtype=torch.int32, device=C.device)
            moves.index_add_(0, labels, switched).index_add_(0, previous, switched)
            changed = moves > 0
            new_objective = float(losses.sum(dtype=torch.float64))
            history.append(new_objective)
            message = f"iteration {it}/{max_iter}: objective {new_objective:.6g}"
            if verbose:
                print(f"[GeneralizedKMeans] restart {restart + 1}, {message}")
            report(restart, _SEEDING_SHARE + (1 - _SEEDING_SHARE) * it / max_iter, message)
            converged = objective - new_objective <= tol * abs(objective)
            objective = new_objective
            if converged:
                break
        return _Result(C, labels, objective, history)


class GeneralizedKMeans:
    """k-means under a general loss (squared, absolute, huber, pseudo_huber,
    correntropy, epsilon_insensitive, geometric_median, cosine, or any
    registered :class:`~clustering.Loss`).

    Parameters
    ----------
    n_clusters : int
        Number of clusters k (1 <= k <= n_samples).
    loss : str or Loss
        Loss name (see :func:`clustering.available_losses`) or instance.
    loss_param : float or None
        delta (huber, pseudo_huber), sigma (correntropy), epsilon
        (epsilon_insensitive); must be None for the other losses. None on a
        parametrized loss picks a data-driven default from the residuals
        x - c to the nearest center c, over the samples within 3x the median
        distance (far outliers left out): huber / pseudo_huber: delta = 1.345
        * 1.4826 * median |x_j - c_j| over residual coordinates; correntropy:
        sigma = median ||x - c||; epsilon_insensitive: epsilon = half that. It
        is estimated on a pilot of at most max(5000, 100 k) samples, first
        from a squared k-means++ seeding (or the init array), then re-estimated
        from the centers that Lloyd iterations under the loss settle on, until
        it changes by less than 5%, each time from the residuals of at most
        max(1000, 2^18 / d) of its samples. The value used is
        ``loss_param_``, the rule ``loss_param_rule_``.
    init : "k-means++", "random" or array (k, d)
        Seeding: greedy k-means++ with sampling proportional to the loss to the
        nearest chosen center, k distinct random samples, or given centers.
        Above max(100000, 100 k) samples, k-means++ seeds on a uniform sample
        of that many.
        For robust losses (absolute, huber, pseudo_huber, correntropy,
        epsilon_insensitive, geometric_median) k-means++ draws proportionally
        to that loss capped at its median, screens the candidates on a probe of
        512 samples, and k local-search swaps follow, so that far outliers do
        not take centers.
    n_init : int
        Number of restarts; the one with the lowest objective is kept (a
        single run when ``init`` is an array).
    max_iter : int
        Maximum number of Lloyd iterations per restart (>= 1; 0 with an
        ``init`` array only assigns the samples to those centers).
    tol : float
        Stop when the relative objective improvement of an iteration is <= tol.
    device : "auto", "cpu", "cuda", ...
        "auto" uses CUDA when available.
    random_state : int, numpy Generator / RandomState or None
        Seed; the same seed gives identical results on CPU.
    dtype : "float32" or "float64"
        Compute precision.
    chunk_size : int or None
        Rows per block of the pairwise loss matrix (default: on CPU blocks of
        about 2^19 losses, at least 2048 rows; 65536 rows on GPU).
    prune : "auto", True or False
        Exact bound-based pruning of the assignment step for the
        coordinate-wise and euclidean losses: losses that bounds prove cannot
        change a sample's center are not computed (the result is the same as
        without pruning, up to float rounding of near-ties). Coordinate-wise
        losses on CPU with d > 32 keep Elkan's bound per (sample, center), an
        (n, k) array of X's dtype, when it is no larger than X or 256 MB;
        otherwise Hamerly's bound per sample skips whole rows. "auto" prunes
        coordinate-wise losses always, and euclidean losses on GPU or from 64
        clusters on: the bound upkeep costs about one O(n d) pass per
        iteration, which a GEMM over k centers only amortizes for larger k
        (an iteration where the bounds fail for most samples is a plain GEMM
        pass, which renews them).
    verbose : bool
        Print the objective of every iteration.

    Attributes
    ----------
    cluster_centers_, labels_, objective_, objective_history_, n_iter_,
    sample_losses_, loss_param_, n_features_in_ (numpy / Python values).
    loss_param_rule_ : str or None
        How the data-driven ``loss_param_`` was estimated, in words (None when
        ``loss_param`` was given or the loss has none).
    """

    def __init__(self, n_clusters, loss="squared", loss_param=None, init="k-means++",
                 n_init=1, max_iter=100, tol=1e-4, device="auto", random_state=None, *,
                 dtype="float32", chunk_size=None, prune="auto", verbose=False):
        self.n_clusters = n_clusters
        self.loss = loss
        self.loss_param = loss_param
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.random_state = random_state
        self.dtype = dtype
        self.chunk_size = chunk_size
        self.prune = prune
        self.verbose = verbose

    # ------------------------------------------------------------- sklearn API
    def get_params(self, deep=True):
        """Constructor parameters (scikit-learn convention)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params):
        """Set constructor parameters (scikit-learn convention); returns self."""
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for GeneralizedKMeans")
            setattr(self, name, value)
        return self

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                           if not isinstance(v, (np.ndarray, torch.Tensor)))
        return f"GeneralizedKMeans({params})"

    # --------------------------------------------------------------- fitting
    def _check_hyperparameters(self):
        # max_iter=0 only assigns the samples to a given init; after a seeding it clusters nothing
        min_iter = 1 if isinstance(self.init, str) else 0
        for name, minimum in (("n_init", 1), ("max_iter", min_iter)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not (isinstance(self.tol, (int, float, np.floating)) and self.tol >= 0):
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if not (isinstance(self.prune, (bool, np.bool_)) or self.prune == "auto"):
            raise ValueError(f"prune must be 'auto', True or False, got {self.prune!r}")

    def _check_n_clusters(self, n):
        k = self.n_clusters
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise ValueError(f"n_clusters={k!r} must be an integer between 1 and the number "
                             f"of samples ({n})")
        return int(k)

    def _check_init(self, k, d, device, dtype):
        init = self.init
        if isinstance(init, str):
            if init not in ("k-means++", "random"):
                raise ValueError(f"init must be 'k-means++', 'random' or an array of shape "
                                 f"(n_clusters, n_features), got {init!r}")
            return init
        shape = tuple(getattr(init, "shape", np.shape(init)))
        if shape != (k, d):
            raise ValueError(f"init array must have shape (n_clusters, n_features) = "
                             f"({k}, {d}), got {shape}")
        return _as_tensor(init, device, dtype, what="init").clone()

    def _default_param(self, loss, X, k, init, rng, prune, report):
        """(data-driven loss_param, the rule in words) from a pilot sample.

        A first value comes from the residuals to a squared k-means++ seeding
        (or to ``init``); then, on the same sample, the loss's own seeding and
        Lloyd iterations run with it and the value is re-estimated from the
        residuals to the settled centers, until it changes by less than
        ``_PARAM_RTOL`` (at most ``_PARAM_ROUNDS`` rounds, each from the
        previous round's centers). The residuals of seeds are those of data
        points (larger by about sqrt(2) than to a cluster's center), and under
        contamination those of seeds on outliers: only settled centers give the
        inliers' scale. Each estimate reads the residuals of at most
        max(``_PARAM_ROWS``, ``_PARAM_VALUES`` / d) evenly spaced rows.
        """
        n, d = X.shape
        m = min(n, max(_PILOT_SAMPLES, _PILOT_SAMPLES_PER_CLUSTER * k))
        Xs = X if m == n else X[torch.as_tensor(rng.choice(n, m, replace=False), device=X.device)]
        rows = m if _PARAM_ROWS is None else min(m, max(_PARAM_ROWS, _PARAM_VALUES // d))
        read = torch.as_tensor(np.linspace(0, m - 1, rows).round().astype(np.int64),
                               device=X.device) if rows < m else slice(None)

        def estimate(C, labels):
            return float(loss.default_param(Xs[read] - C[labels[read]]))

        pilot = _Engine(Xs, get_loss("squared"), None, self.chunk_size)
        given = isinstance(init, torch.Tensor)
        C = init if given else pilot.kmeans_plusplus(k, rng)
        param = estimate(C, pilot.assign(C)[0])
        if not given:
            C = _Engine(Xs, loss, param, self.chunk_size).kmeans_plusplus(k, rng)
        for rounds in range(1, _PARAM_ROUNDS + 1):
            report(0, 0.0, f"estimating {loss.param_name}: round {rounds}, {param:.4g}")
            result = _Engine(Xs, loss, param, self.chunk_size, prune).run(
                C, int(self.max_iter), float(self.tol), lambda *args: None, 0)
            C = result.centers
            new = estimate(C, result.labels)
            settled = abs(new - param) <= _PARAM_RTOL * param
            param = new
            if settled:
                break
        rule = loss.param_rule or f"{loss.param_name} = {type(loss).__name__}.default_param"
        start = "the given init" if given else "a squared k-means++ seeding"
        residuals = f", residuals of {rows} of them" if rows < m else ""
        return param, (
            f"{rule}, over the residuals x - c to the nearest center c of the samples "
            f"within {OUTLIER_DISTANCES:g}x the median distance; estimated from {start} "
            f"and re-estimated as the centers settled ({rounds} rounds of Lloyd "
            f"iterations on {m} samples{residuals})")

    def fit(self, X, progress=None):
        """Cluster X (n, d) (numpy array or torch tensor); returns self.

        ``progress(fraction, message)`` is called as work advances, with the
        fraction in [0, 1] covering all ``n_init`` restarts.
        """
        loss = get_loss(self.loss)
        param = loss.check_param(self.loss_param)
        self._check_hyperparameters()
        device = _resolve_device(self.device, X)
        X = _as_tensor(X, device, _resolve_dtype(self.dtype))
        n, d = X.shape
        k = self._check_n_clusters(n)
        init = self._check_init(k, d, device, X.dtype)
        rng = _make_rng(self.random_state)
        n_init = 1 if isinstance(init, torch.Tensor) else int(self.n_init)
        report = _Progress(progress, n_init)
        report(0, 0.0, "starting")
        if device.type == "cpu":
            dtype_name = str(X.dtype).removeprefix("torch.")
            ensure_ready(loss.name, dtype_name, compile_kernels, progress=lambda message: report(0, 0.0, message))
        prune = self.prune
        if prune == "auto":
            prune = loss.geometry == "coordinatewise" or (
                loss.geometry == "euclidean"
                and (device.type != "cpu" or k >= _PRUNE_MIN_CLUSTERS))
        rule = None
        if param is None and loss.param_name is not None:
            param, rule = self._default_param(loss, X, k, init, rng, prune, report)
        engine = _Engine(X, loss, param, self.chunk_size, prune)
        best = None
        for restart in range(n_init):
            if isinstance(init, torch.Tensor):
                centers = init.clone()
            elif init == "random":
                idx = rng.choice(n, k, replace=False)
                centers = X[torch.as_tensor(idx, device=device)].clone()
            else:
                centers = engine.kmeans_plusplus(k, rng)
            report(restart, _SEEDING_SHARE, f"restart {restart + 1}/{n_init}: seeded")
            result = engine.run(centers, int(self.max_iter), float(self.tol), report, restart,
                                self.verbose)
            if best is None or result.objective < best.objective:
                best = result
            report(restart, 1.0, f"restart {restart + 1}/{n_init} done, "
                                 f"objective {result.objective:.6g}")
        losses = engine.exact_losses(best.centers, best.labels)
        self.cluster_centers_ = best.centers.cpu().numpy()
        self.labels_ = best.labels.cpu().numpy().astype(np.int64)
        self.sample_losses_ = losses.cpu().numpy()
        self.objective_ = float(losses.sum(dtype=torch.float64))
        self.objective_history_ = np.asarray(best.history, dtype=np.float64)
        self.n_iter_ = len(best.history)
        self.loss_param_ = param
        self.loss_param_rule_ = rule
        self.n_features_in_ = d
        self._loss = loss
        self._device = device
        formed = len(np.unique(self.labels_))
        distinct = len(torch.unique(X, dim=0)) if formed < k else k
        if distinct < k:
            warnings.warn(
                f"Only {formed} of the n_clusters={k} clusters could be formed: X has "
                f"{distinct} distinct points", FewerClustersWarning, stacklevel=2,
            )
        return self

    def fit_predict(self, X, progress=None):
        """Fit and return ``labels_``."""
        return self.fit(X, progress=progress).labels_

    # ------------------------------------------------------------ inference
    def _check_fitted(self):
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("This GeneralizedKMeans instance is not fitted yet; "
                                 "call 'fit' first.")

    def _engine_for(self, X):
        self._check_fitted()
        X = _as_tensor(X, self._device, _resolve_dtype(self.dtype))
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but this GeneralizedKMeans was "
                             f"fitted with {self.n_features_in_} features")
        C = torch.as_tensor(self.cluster_centers_, device=X.device, dtype=X.dtype)
        return _Engine(X, self._loss, self.loss_param_, self.chunk_size), C

    def predict(self, X):
        """Index of the center of smallest loss for each sample of X (int64)."""
        engine, C = self._engine_for(X)
        return engine.assign(C)[0].cpu().numpy().astype(np.int64)

    def transform(self, X):
        """(n, k) loss of each sample of X to each center."""
        engine, C = self._engine_for(X)
        return engine.losses_to(C).cpu().numpy()

    def assign(self, X):
        """``(labels, losses)``: the center of smallest loss for each sample of
        X (int64) and the loss to it (computed directly, as ``sample_losses_``)."""
        engine, C = self._engine_for(X)
        labels = engine.assign(C)[0]
        return labels.cpu().numpy().astype(np.int64), engine.exact_losses(C, labels).cpu().numpy()

    @classmethod
    def from_centers(cls, centers, loss="squared", loss_param=None, device="auto", dtype="float32"):
        """A fitted estimator whose clusters are ``centers`` (k, d) under
        ``loss`` (its parameter, if any, given): ``predict``, ``transform`` and
        ``assign`` work as after ``fit`` (a stored run's centers, say)."""
        centers = np.asarray(centers)
        km = cls(len(centers), loss=loss, loss_param=loss_param, device=device, dtype=dtype)
        km._loss = get_loss(loss)
        km.loss_param_ = km._loss.check_param(loss_param)
        if km.loss_param_ is None and km._loss.param_name is not None:
            raise ValueError(f"loss '{loss}' needs its {km._loss.param_name} (loss_param) to assign samples")
        km._device = _resolve_device(device, None)
        km.cluster_centers_ = _as_tensor(centers, torch.device("cpu"), _resolve_dtype(dtype), "centers").numpy()
        km.n_features_in_ = centers.shape[1]
        return km

    def representatives(self, n=1):
        """For each cluster j, the indices (int64) of its up to ``n`` samples of
        smallest loss to center j, ascending by loss (empty for empty clusters)."""
        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        order = np.lexsort((self.sample_losses_, self.labels_))
        sorted_labels = self.labels_[order]
        k = self.cluster_centers_.shape[0]
        starts = np.searchsorted(sorted_labels, np.arange(k), side="left")
        ends = np.searchsorted(sorted_labels, np.arange(k), side="right")
        return [order[s:min(e, s + n)].astype(np.int64) for s, e in zip(starts, ends)]


# the engine's regimes that use different kernels: d up to _LANES_MAX_D puts
# samples on the vector lanes; euclidean pruning starts at 64 clusters
_SMALL_D, _LARGE_D = 8, K._LANES_MAX_D + 8
_FEW_CLUSTERS, _MANY_CLUSTERS = 3, 64


def _tiny_fits(loss, dtype):
    """The (n, d, k) problems whose fits compile every kernel ``loss`` uses."""
    ks = [_FEW_CLUSTERS]
    if get_loss(loss).geometry in ("euclidean", "cosine"):
        ks.append(_MANY_CLUSTERS)
    return [(4 * _MANY_CLUSTERS, d, k) for d in (_SMALL_D, _LARGE_D) for k in ks]


def compile_kernels(loss, dtype):
    """Fits tiny problems with ``loss`` in ``dtype`` on the CPU on every code
    path that uses a kernel: numba compiles them (or loads them from its cache)."""
    rng = np.random.default_rng(0)
    for n, d, k in _tiny_fits(loss, dtype):
        X = rng.normal(size=(n, d)).astype(dtype)
        X[: n // 2] += 3.0
        km = GeneralizedKMeans(k, loss=loss, n_init=1, max_iter=3, device="cpu", random_state=0,
                               dtype=dtype).fit(X)
        km.predict(X[:8])
        km.transform(X[:8])
