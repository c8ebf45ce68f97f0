"""Loss registry for :class:`clustering.GeneralizedKMeans`.

A loss measures how badly a center ``mu`` represents a sample ``x``; the
clustering objective is the sum over samples of the loss to their assigned
center. Each loss is a small :class:`Loss` subclass that knows

* its name and the name of its parameter (``param_name``, or None),
* the rowwise loss ``loss(X, C)`` and the pairwise loss matrix ``pairwise``,
* the center update: the minimizer (or a monotone majorize-minimize step
  towards it) of the summed loss of each cluster, for all clusters at once,
* a data-driven default for its parameter (``default_param``, described by
  ``param_rule``), and whether it is ``robust`` to far samples.

The engine recognizes three geometries for fast assignment (``geometry``):
``"euclidean"`` (loss is a nondecreasing function of the squared Euclidean
distance: assignment is a GEMM), ``"cosine"`` and ``"coordinatewise"`` (loss is
``sum_t rho(x_t - mu_t)`` with a Lipschitz ``rho``: assignment uses exact bound
pruning). A custom loss with ``geometry = None`` only needs ``loss`` (and gets
chunked generic assignment and an autograd L-BFGS center update).

The built-in losses follow the definitions of the original notebook
(``get_loss_func``), plus ``geometric_median`` and ``cosine``.
"""

import math

from . import _kernels as K  # first: sets the OpenMP wait policy before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["Loss", "register_loss", "get_loss", "available_losses"]


class Loss:
    """Base class of a clustering loss (subclass it and call :func:`register_loss`).

    Subclasses set ``name`` (and ``param_name`` if parametrized) and implement
    :meth:`loss`; they may override :meth:`pairwise`, :meth:`update_centers`
    and :meth:`default_param` with faster or exact versions. ``label`` and
    ``summary`` describe the loss in the App's forms.
    """

    name = None
    #: the name shown in forms (default: ``name``) and a one-line description
    label = None
    summary = ""
    param_name = None
    #: how :meth:`default_param` derives the parameter from the residuals, in words
    param_rule = None
    aliases = ()
    geometry = None
    #: whether a far sample's pull on its center is bounded (a robust M-estimate):
    #: the engine then seeds so that far outliers do not take centers
    robust = False
    #: whether :meth:`update_centers` reads its ``scale`` argument (max |x|);
    #: the engine computes that pass over the data only for losses that do
    uses_scale = False

    def check_param(self, value):
        """Validated parameter (a positive float), or None for a data-driven default."""
        if self.param_name is None:
            if value is not None:
                raise ValueError(f"loss '{self.name}' takes no parameter, got loss_param={value!r}")
            return None
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"loss_param ({self.param_name} of loss '{self.name}') must be a positive "
                f"number, got {value!r}"
            ) from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"loss_param ({self.param_name} of loss '{self.name}') must be a positive "
                f"finite number, got {value!r}"
            )
        return value

    def default_param(self, residuals):
        """Parameter to use when none is given, from residuals x - nearest center (m, d)
        (``param_rule`` says how, in words)."""
        raise NotImplementedError(f"loss '{self.name}' has no default for {self.param_name}")

    def loss(self, X, C, param):
        """Loss of each row of X to the matching row of C (broadcasts; reduces the last dim)."""
        raise NotImplementedError

    def pairwise(self, X, C, param):
        """(m, k) loss of every row of X to every row of C (X is one chunk of rows)."""
        return self.loss(X[:, None, :], C[None, :, :], param)

    def update_centers(self, X, labels, centers, param, *, max_iter=5000, tol=1e-12, scale=None):
        """New (k, d) centers that do not increase the summed loss of each cluster.

        The generic version runs L-BFGS with autograd on all clusters at once
        (the objective separates over clusters) from ``centers`` and keeps the
        result only if it lowers the objective. Empty clusters keep their center.
        """
        def objective(C):
            return self.loss(X, C[labels], param).sum()

        C = centers.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([C], max_iter=max_iter, tolerance_change=tol,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            value = objective(C)
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(closure)
        with torch.no_grad():
            if objective(C) <= objective(centers):
                return C.detach()
        return centers.clone()

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class RadialLoss(Loss):
    """A loss phi(||x - mu||^2) with phi nondecreasing: nearest center = Euclidean nearest."""

    geometry = "euclidean"

    def from_sqdist(self, d2, param):
        raise NotImplementedError

    def loss(self, X, C, param):
        return self.from_sqdist(((X - C) ** 2).sum(-1), param)

    def pairwise(self, X, C, param):
        return self.from_sqdist(K.sqeuclidean_pairwise(X, C), param)


# residual rows farther from their center than this many times the median
# distance are outliers: the scale estimates leave them out
OUTLIER_DISTANCES = 3.0


def _inlier_residuals(residuals):
    """float64 numpy residual rows whose norm is at most ``OUTLIER_DISTANCES``
    times the median norm (all rows when that median is 0), and their norms.

    The median itself is robust, but far outliers still shift it to a higher
    quantile of the inliers (by 19% for 20% outliers in 2-d); without them the
    scale is the inliers' own.
    """
    R = residuals.detach().cpu().double().numpy()
    norms = np.linalg.norm(R, axis=1)
    median = np.median(norms)
    if median > 0:
        inliers = norms <= OUTLIER_DISTANCES * median
        R, norms = R[inliers], norms[inliers]
    return R, norms


def _median_distance(residuals):
    """Median row norm of the inlier residuals (see ``_inlier_residuals``;
    falls back to the mean, then 1)."""
    _, norms = _inlier_residuals(residuals)
    for value in (np.median(norms), norms.mean()):
        if value > 0:
            return float(value)
    return 1.0


def _robust_coordinate_scale(residuals):
    """Gaussian-consistent scale of the inlier residuals' coordinates (see
    ``_inlier_residuals``): 1.4826 * median |r| (falls back to the mean
    absolute deviation, then 1)."""
    R, _ = _inlier_residuals(residuals)
    r = np.abs(R)
    median = np.median(r, overwrite_input=True)
    if median > 0:
        return 1.4826 * float(median)
    if r.mean() > 0:
        return math.sqrt(math.pi / 2) * float(r.mean())
    return 1.0


def _scatter_update(S, A, centers):
    """S / A per cluster (empty clusters, A == 0, keep their center)."""
    filled = A > 0
    new = S / torch.where(filled, A, torch.ones_like(A))[:, None]
    return torch.where(filled[:, None], new.to(centers.dtype), centers)


def _tiny(X, scale):
    """Distance below which a point counts as sitting on a kink (rounding level)."""
    if scale is None:
        scale = float(torch.maximum(X.max(), -X.min()))
    eps = torch.finfo(X.dtype).eps
    return 16.0 * eps * max(scale, 1e-300) * math.sqrt(X.shape[1])


class SquaredLoss(RadialLoss):
    """sum_j (x_j - mu_j)^2; center = mean (classic k-means)."""

    name = "squared"
    label = "Squared L2 (k-means)"
    summary = "center = mean; classic k-means"
    aliases = ("square", "l2", "sqeuclidean")

    def from_sqdist(self, d2, param):
        return d2

    def update_centers(self, X, labels, centers, param, *, max_iter=5000, tol=1e-12, scale=None):
        S, A = K.weighted_sums(X, labels, centers.shape[0])
        return _scatter_update(S, A, centers)


class _MMRadialLoss(RadialLoss):
    """Radial loss whose center update iterates a majorize-minimize (MM) map,
    accelerated by SQUAREM (see :func:`_accelerated_mm`)."""

    uses_scale = True

    def _mm_step(self, X, labels, C, param, tiny, tol):
        """One MM step for all clusters: (new centers, loss per cluster at C)."""
        raise NotImplementedError

    def update_centers(self, X, labels, centers, param, *, max_iter=5000, tol=1e-12, scale=None):
        """Accelerated MM from ``centers`` until the relative decrease of the summed
        loss is <= ``tol`` (or about ``max_iter`` MM steps); never increases the loss."""
        tiny = _tiny(X, scale)
        return _accelerated_mm(lambda C: self._mm_step(X, labels, C, param, tiny, tol),
                               centers, max_iter, tol).to(centers.dtype)


def _accelerated_mm(step, centers, max_iter, tol):
    """SQUAREM (Varadhan & Roland 2008) around a monotone MM map, per cluster.

    A cycle takes two MM steps m1 = M(mu), m2 = M(m1) (and stops there once
    the first lowered the loss by <= tol relative), extrapolates
    cand = mu - 2 a r + a^2 v (r = m1 - mu, v = m2 - 2 m1 + mu,
    a = -|r| / |v| <= -1) and stabilizes it with one more step M(cand). A
    cluster keeps M(cand) only if loss(cand) <= loss(m1), otherwise m2, so the
    loss never increases; extrapolation turns the slow linear convergence of MM
    near kinks (points on a tube surface, data points) into fast convergence.
    """
    mu = centers
    steps = 0
    while steps < max_iter:
        m1, loss_mu = step(mu)
        mu = mu.to(m1.dtype)
        m2, loss_m1 = step(m1)
        steps += 2
        objective = float(loss_m1.sum())
        if float(loss_mu.sum()) - objective <= tol * abs(objective):
            return m2
        r = m1 - mu
        v = m2 - m1 - r
        r_norm, v_norm = r.norm(dim=1), v.norm(dim=1)
        a = torch.where(v_norm > 0, -r_norm / torch.where(v_norm > 0, v_norm, 1.0), -1.0)
        a = a.clamp(max=-1.0)[:, None]
        candidate = mu - 2 * a * r + a * a * v
        stabilized, loss_candidate = step(candidate)
        steps += 1
        keep = (loss_candidate <= loss_m1)[:, None]
        mu = torch.where(keep, stabilized, m2)
    return mu


class CorrentropyLoss(_MMRadialLoss):
    """1 - exp(-||x - mu||^2 / (2 sigma^2)) (Welsch / correntropy; bounded, non-convex).

    Center update: half-quadratic majorize-minimize (weighted mean with weights
    exp(-||x - mu||^2 / 2 sigma^2)) started from the previous center, SQUAREM
    accelerated; it never increases the objective. Default sigma: the median
    distance of a sample to its nearest center (far outliers left out), so a
    typical member sits one kernel width from its center and far outliers get
    negligible weight.
    """

    name = "correntropy"
    label = "Correntropy (sigma)"
    summary = "1 - exp(-d^2 / 2 sigma^2): ignores far outliers"
    param_name = "sigma"
    param_rule = "sigma = median ||x - c||"
    robust = True
    aliases = ("welsch",)

    def from_sqdist(self, d2, param):
        return -torch.expm1(-d2 / (2.0 * param * param))

    def default_param(self, residuals):
        return _median_distance(residuals)

    def _mm_step(self, X, labels, C, param, tiny, tol):
        S, A, _, L = K.radial_stats(X, C, labels, K.CORRENTROPY, param, tiny)
        return _scatter_update(S, A, C.to(S.dtype)), L


class GeometricMedianLoss(_MMRadialLoss):
    """||x - mu|| (unsquared Euclidean distance); center = geometric median.

    Center update: Weiszfeld iterations with the Vardi-Zhang modification, which
    stays correct when the iterate lands on data points (it moves off a data point
    exactly when that lowers the objective), SQUAREM accelerated.
    """

    name = "geometric_median"
    label = "Geometric median"
    summary = "Euclidean distance, center = geometric median"
    aliases = ("spatial_median", "weber")
    robust = True

    def from_sqdist(self, d2, param):
        return d2.sqrt()

    def _mm_step(self, X, labels, C, param, tiny, tol):
        S, A, E, L = K.radial_stats(X, C, labels, K.GEOMETRIC_MEDIAN, 0.0, tiny)
        C = C.to(S.dtype)
        R = S - A[:, None] * C  # sum over points off the center of (x - mu) / r
        norm = R.norm(dim=1)
        keep = torch.where(E > 0, 1.0 - E / torch.where(norm > 0, norm, torch.ones_like(norm)),
                           torch.ones_like(norm)).clamp(min=0)
        move = (A > 0) & (keep > 0)
        safe_A = torch.where(A > 0, A, torch.ones_like(A))
        return torch.where(move[:, None], C + (keep / safe_A)[:, None] * R, C), L


class EpsilonInsensitiveLoss(_MMRadialLoss):
    """max(0, ||x - mu|| - epsilon): deviations inside the epsilon-ball are free.

    The minimizer of a cluster's loss need not be unique (every point within
    epsilon of all members is optimal), and the optimum typically sits on the
    surface of some members' tubes, where the loss has a kink. Center update:
    majorize-minimize with an *anisotropic* quadratic surrogate that is tight at
    the current center (``_kernels.epsilon_stats``): members outside the tube
    pull like in Weiszfeld's algorithm, members inside only resist leaving their
    tube radially, so the center can slide along tube surfaces. Each surrogate is
    minimized by conjugate-gradient steps (all clusters at once; any CG iterate
    lowers the surrogate, so every step is monotone), and SQUAREM extrapolation
    speeds up the sliding along curved tube surfaces. A center that is already
    optimal (e.g. zero loss) stays put. Default epsilon: half the median distance
    of a sample to its nearest center (far outliers left out).
    """

    name = "epsilon_insensitive"
    label = "Epsilon-insensitive (epsilon)"
    summary = "max(0, d - epsilon): no loss inside an epsilon-ball"
    param_name = "epsilon"
    param_rule = "epsilon = 0.5 * median ||x - c||"
    robust = True
    aliases = ("epsilon-insensitive", "eps_insensitive")
    cg_max_iter = 64

    def from_sqdist(self, d2, param):
        return (d2.sqrt() - param).clamp(min=0)

    def default_param(self, residuals):
        return 0.5 * _median_distance(residuals)

    def _mm_step(self, X, labels, C, param, tiny, tol):
        C = C.to(X.dtype)  # the surrogate is built at C in X's precision (see epsilon_stats)
        G, alpha, L, b = K.epsilon_stats(X, C, labels, param, tiny)
        C = C.to(G.dtype)
        rows = torch.nonzero(b > 0).flatten()

        def hessian(P):
            out = alpha[:, None] * P
            if rows.numel():
                out = out + K.lowrank_matvec(X, C, labels, rows, b, P)
            return out

        step = _conjugate_gradient(hessian, G, min(X.shape[1] + 1, self.cg_max_iter),
                                   rtol=math.sqrt(tol))
        return C + step, L


def _conjugate_gradient(matvec, rhs, max_iter, rtol=1e-10):
    """Batched CG for k independent SPD systems H_j x_j = rhs_j (rows of rhs)."""
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    rs = (residual * residual).sum(1)
    stop = rs * rtol * rtol
    for _ in range(max_iter):
        live = rs > stop
        if not bool(live.any()):
            break
        Hp = matvec(direction)
        curvature = (direction * Hp).sum(1)
        ok = live & (curvature > 0)
        step = torch.where(ok, rs / torch.where(ok, curvature, torch.ones_like(curvature)), 0.0)
        x += step[:, None] * direction
        residual -= step[:, None] * Hp
        rs_new = (residual * residual).sum(1)
        beta = torch.where(ok, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), 0.0)
        direction = residual + beta[:, None] * direction
        rs = torch.where(ok, rs_new, torch.zeros_like(rs_new))
    return x


class CosineLoss(Loss):
    """1 - cos(x, mu) (spherical k-means); center = normalized mean direction.

    Zero samples have loss 1 to every center.
    """

    name = "cosine"
    label = "Cosine (spherical k-means)"
    summary = "1 - cos: for normalized / CLIP-like embeddings"
    aliases = ("spherical",)
    geometry = "cosine"

    def loss(self, X, C, param):
        dot = (X * C).sum(-1)
        norms = X.norm(dim=-1) * C.norm(dim=-1)
        return 1.0 - torch.where(norms > 0, dot / torch.where(norms > 0, norms, 1.0), 0.0)

    def pairwise(self, X, C, param):
        xn = X.norm(dim=1, keepdim=True)
        cn = C.norm(dim=1, keepdim=True)
        Xu = X / torch.where(xn > 0, xn, torch.ones_like(xn))
        Cu = C / torch.where(cn > 0, cn, torch.ones_like(cn))
        return 1.0 - Xu @ Cu.T

    def update_centers(self, X, labels, centers, param, *, max_iter=5000, tol=1e-12, scale=None):
        norms = K.row_sqnorms(X).sqrt()
        weights = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
        S, _ = K.weighted_sums(X, labels, centers.shape[0], weights)
        length = S.norm(dim=1)
        filled = length > 0
        new = (S / torch.where(filled, length, torch.ones_like(length))[:, None]).to(centers.dtype)
        return torch.where(filled[:, None], new, centers)


class CoordinateLoss(Loss):
    """A loss sum_t rho(x_t - mu_t) with |rho'| <= ``lipschitz(param)``.

    Built-ins set ``kind`` (a kernel id in ``_kernels``): fused kernels, bound
    pruning, and per-coordinate center updates (independent 1-D problems solved
    for all clusters and coordinates at once). A subclass without ``kind`` only
    overrides :meth:`rho` and uses the generic paths.
    """

    geometry = "coordinatewise"
    kind = None

    def lipschitz(self, param):
        return 1.0

    def _delta(self, param):
        return 1.0 if param is None else param

    def rho(self, r, param):
        """Elementwise loss of the residuals r = x - mu."""
        return K.rho_torch(r, self.kind, self._delta(param))

    def loss(self, X, C, param):
        return self.rho(X - C, param).sum(-1)

    def pairwise(self, X, C, param):
        if self.kind is None:
            return super().pairwise(X, C, param)
        return K.coord_pairwise(X, C, self.kind, self._delta(param))

    def update_centers(self, X, labels, centers, param, *, max_iter=5000, tol=1e-12, scale=None):
        if self.kind is None:
            return super().update_centers(X, labels, centers, param, max_iter=max_iter, tol=tol)
        return K.coord_centers(X, labels, centers, self.kind, self._delta(param),
                               max_iter=max(max_iter, 100), xtol=min(tol, 1e-10))

    def default_param(self, residuals):
        return 1.345 * _robust_coordinate_scale(residuals)


class AbsoluteLoss(CoordinateLoss):
    """sum_j |x_j - mu_j| (L1); center = coordinate-wise median."""

    name = "absolute"
    label = "L1 / absolute"
    summary = "center = coordinate-wise median; robust to outlying coordinates"
    aliases = ("l1", "manhattan", "cityblock")
    kind = K.ABS
    robust = True


class HuberLoss(CoordinateLoss):
    """sum_j H(x_j - mu_j), H(r) = r^2/2 if |r| <= delta else delta (|r| - delta/2).

    Center: exact per-coordinate Huber M-estimate (bracketed Newton, which is
    exact on the piecewise-linear score). Default delta: 1.345 times the robust
    (MAD-based) scale of the residual coordinates (far outliers left out) -- the
    classic 95%-efficiency tuning constant.
    """

    name = "huber"
    label = "Huber (delta)"
    summary = "quadratic near the center, linear beyond delta, per coordinate"
    param_name = "delta"
    param_rule = "delta = 1.345 * 1.4826 * median |x_j - c_j|"
    kind = K.HUBER
    robust = True

    def lipschitz(self, param):
        return param


class PseudoHuberLoss(CoordinateLoss):
    """sum_j delta^2 (sqrt(1 + (r_j / delta)^2) - 1), r = x - mu (smooth Huber).

    Center: per-coordinate M-estimate by safeguarded Newton. Default delta as for
    Huber: 1.345 times the robust scale of the residual coordinates.
    """

    name = "pseudo_huber"
    label = "Pseudo-Huber (delta)"
    summary = "smooth Huber, per coordinate"
    param_name = "delta"
    param_rule = HuberLoss.param_rule
    robust = True
    aliases = ("pseudo-huber", "pseudohuber", "smooth_l1")
    kind = K.PSEUDO_HUBER

    def lipschitz(self, param):
        return param


_REGISTRY = {}
_ALIASES = {}


def _key(name):
    return str(name).strip().lower()


def register_loss(loss, overwrite=False):
    """Register a :class:`Loss` subclass or instance under its ``name`` (and aliases).

    Returns the registered instance, so it can be used as a class decorator's
    side effect: ``register_loss(MyLoss)``.
    """
    instance = loss() if isinstance(loss, type) else loss
    if not isinstance(instance, Loss):
        raise TypeError(f"register_loss expects a Loss subclass or instance, got {loss!r}")
    if not instance.name:
        raise ValueError(f"{type(instance).__name__} must define a non-empty 'name'")
    key = _key(instance.name)
    if not overwrite and (key in _REGISTRY or key in _ALIASES):
        raise ValueError(f"a loss named '{instance.name}' is already registered")
    _REGISTRY[key] = instance
    for alias in instance.aliases:
        _ALIASES.setdefault(_key(alias), key)
    return instance


def get_loss(name):
    """The registered loss for ``name`` (case-insensitive; aliases allowed) or a Loss instance."""
    if isinstance(name, Loss):
        return name
    if isinstance(name, type) and issubclass(name, Loss):
        return name()
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}. Valid losses: {', '.join(available_losses())}")
    return _REGISTRY[key]


def available_losses():
    """Sorted names of the registered losses."""
    return sorted(_REGISTRY)


for _cls in (SquaredLoss, AbsoluteLoss, HuberLoss, PseudoHuberLoss, CorrentropyLoss,
             EpsilonInsensitiveLoss, GeometricMedianLoss, CosineLoss):
    register_loss(_cls)
