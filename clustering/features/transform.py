"""Feature matrices for clustering: checking embeddings, and optional
normalization / PCA / UMAP reduction."""

import numpy as np

REDUCTIONS = ("auto", "none", "pca", "umap")


def nonfinite_message(count, n, source="embeddings"):
    """The error for ``count`` of ``n`` rows with NaN or infinite values."""
    return (
        f"{count} of {n} rows of {source} contain NaN or "
        "infinite values; fix or remove them before clustering"
    )


def mismatched_dimensions_message(source, dims):
    """The error for vectors of different lengths ``dims``."""
    return (
        f"{source} have mismatched dimensions {sorted(set(dims))}; all vectors "
        "must have the same length"
    )


#: rows per block of the passes over a feature matrix (no full-size temporaries)
_BLOCK_ROWS = 1 << 14


def check_finite(X, source="embeddings"):
    """Raises ``ValueError`` giving the count of rows with NaN or infinite values."""
    bad = sum(
        int((~np.isfinite(X[s : s + _BLOCK_ROWS]).all(axis=1)).sum()) for s in range(0, len(X), _BLOCK_ROWS)
    )
    if bad:
        raise ValueError(nonfinite_message(bad, len(X), source))


def check_magnitude(X, source="embeddings"):
    """Raises ``ValueError`` giving the count of rows with values too large
    for float32 distance arithmetic (see :func:`clustering.engine.kmeans.max_abs_value`)."""
    from ..engine.kmeans import max_abs_value, too_large_message

    limit = max_abs_value(X.shape[1])
    largest = max(
        (float(np.abs(X[s : s + _BLOCK_ROWS]).max()) for s in range(0, len(X), _BLOCK_ROWS)), default=0.0
    )
    if largest > limit:
        bad = sum(
            int((np.abs(X[s : s + _BLOCK_ROWS]) > limit).any(axis=1).sum()) for s in range(0, len(X), _BLOCK_ROWS)
        )
        raise ValueError(f"{bad} of {len(X)} rows: " + too_large_message(source, largest, limit, X.shape[1]))


def as_matrix(rows, source="embeddings"):
    """Stacks per-sample vectors (or checks a 2-D array) into a float32
    ``(n, d)`` matrix, naming the problem when their dimensions differ. A
    float32 C-contiguous array is returned as is."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2:
        X = np.ascontiguousarray(rows, dtype=np.float32)
    else:
        dims = {np.asarray(r).size for r in rows}
        if len(dims) > 1:
            raise ValueError(mismatched_dimensions_message(source, dims))
        X = np.asarray([np.asarray(r, dtype=np.float32).ravel() for r in rows], dtype=np.float32)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"{source} are empty")
    check_finite(X, source)
    return X


def is_embeddings_type(ftype):
    """Whether a field of type ``ftype`` can hold one embedding per sample: a
    vector or array field, or a list of numbers (``sample[f] = v.tolist()``)."""
    import fiftyone as fo

    return isinstance(ftype, (fo.VectorField, fo.ArrayField)) or (
        isinstance(ftype, fo.ListField) and isinstance(ftype.field, (fo.FloatField, fo.IntField))
    )


def embeddings_fields(samples):
    """Names of the fields of ``samples`` that can hold embeddings: sample
    fields, and in a patches view also attributes of its patches (such as
    ``ground_truth.embedding``)."""
    schema = samples.get_field_schema(flat=True)
    patches_field = getattr(samples, "patches_field", None) if samples._is_patches else None
    names = {
        name
        for name, ftype in schema.items()
        if is_embeddings_type(ftype)
        and ("." not in name or (patches_field and name.startswith(patches_field + ".")))
    }
    return sorted(names)


def validate_embeddings_field(samples, field):
    """Raises ``ValueError`` unless ``field`` can hold embeddings (see
    :func:`is_embeddings_type`)."""
    schema = samples.get_field_schema(flat=True)
    if field not in schema:
        raise ValueError(
            f"Embeddings field '{field}' does not exist on this collection"
        )
    ftype = schema[field]
    if not is_embeddings_type(ftype):
        raise ValueError(
            f"Field '{field}' has type {type(ftype).__name__}; expected a vector "
            "field (fo.VectorField), an array field or a list of numbers holding "
            "one embedding per sample"
        )


#: UMAP as the default reduction does it (bench/README.md, "Photo collections"):
#: to 5 dimensions, cosine metric, 15 neighbours, no minimum distance
UMAP_PARAMS = {"metric": "cosine", "n_neighbors": 15, "min_dist": 0.0}
DEFAULT_UMAP_COMPONENTS = 5
#: rows a UMAP is fitted on; the others are mapped with its ``transform``
UMAP_FIT_SIZE = 20_000
#: ``reduction="auto"`` reduces with UMAP from this many rows (fewer: none)
AUTO_UMAP_MIN_ROWS = 50


class FeatureTransform:
    """What a run does to embeddings before clustering: optional L2
    normalization, then PCA or UMAP to ``n_components`` dimensions.

    ``reduction="auto"`` (the default of ``compute_clusters``) is UMAP to
    :data:`DEFAULT_UMAP_COMPONENTS` dimensions with :data:`UMAP_PARAMS` when
    there are at least :data:`AUTO_UMAP_MIN_ROWS` rows, else none: on photo
    collections it clustered best of every preprocessing measured
    (``bench/README.md``). A UMAP is fitted on at most ``umap_fit_size``
    rows (a uniform sample, drawn with ``random_state``); the other rows are
    mapped by its ``transform``. Its seed makes it deterministic, so a later
    process refits the same UMAP from the same rows (:meth:`refit_umap`).

    ``fit_transform`` fits it on the clustered rows; ``transform`` applies the
    same mapping to new rows (for PCA from the stored ``pca_mean_`` and
    ``pca_components_``, also in a later process through :meth:`from_state`).
    ``info_`` is the JSON-friendly description a run's config records;
    ``umap_fit_rows_`` the rows a UMAP was fitted on.
    """

    def __init__(self, normalize=False, reduction="none", n_components=None, random_state=None,
                 umap_fit_size=UMAP_FIT_SIZE):
        reduction = reduction or "none"
        if reduction not in REDUCTIONS:
            raise ValueError(f"Unknown reduction '{reduction}'; choose one of {REDUCTIONS}")
        if reduction == "auto":
            n_components = n_components or DEFAULT_UMAP_COMPONENTS
        if reduction != "none" and (not n_components or n_components < 1):
            raise ValueError(f"{reduction.upper()} needs n_components >= 1")
        if isinstance(umap_fit_size, bool) or not isinstance(umap_fit_size, (int, np.integer)) or umap_fit_size < 2:
            raise ValueError(f"umap_fit_size must be an integer >= 2; got {umap_fit_size!r}")
        self.normalize = bool(normalize)
        self.reduction = reduction
        self.n_components = int(n_components) if reduction != "none" else None
        # a UMAP is always seeded: a later process refits the same one
        self.random_state = random_state if random_state is not None or reduction not in ("auto", "umap") else 51
        self.umap_fit_size = int(umap_fit_size)
        self.pca_mean_ = self.pca_components_ = None
        self.umap_fit_rows_ = None
        self._umap = None

    def _normalized(self, X, copy):
        """X with unit rows (in place unless ``copy``), a block at a time."""
        if not self.normalize:
            return X
        if copy:
            X = X.copy()
        for s in range(0, len(X), _BLOCK_ROWS):
            block = X[s : s + _BLOCK_ROWS]
            block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        return X

    def _new_umap(self, n_rows):
        import umap

        params = dict(UMAP_PARAMS, n_neighbors=min(UMAP_PARAMS["n_neighbors"], n_rows - 1))
        return umap.UMAP(n_components=self.n_components, random_state=self.random_state, n_jobs=1, **params)

    def fit_transform(self, X, copy=True):
        """Fits the transform on ``X`` (float32 ``(n, d)``) and returns it
        applied; ``copy=False`` lets it normalize ``X`` in place."""
        if self.reduction == "auto":
            self.reduction = "umap" if len(X) >= AUTO_UMAP_MIN_ROWS else "none"
            self.n_components = self.n_components if self.reduction == "umap" else None
        self.info_ = {"normalize": self.normalize, "reduction": self.reduction, "input_dim": int(X.shape[1])}
        X = self._normalized(np.asarray(X, dtype=np.float32), copy)
        if self.reduction != "none":
            n_components = self.n_components
            limit = min(X.shape) if self.reduction == "pca" else X.shape[1]
            if n_components > limit:
                raise ValueError(
                    f"n_components={n_components} is larger than the {self.reduction.upper()} "
                    f"limit {limit} for {X.shape[0]} samples of dimension {X.shape[1]}"
                )
            if self.reduction == "pca":
                from sklearn.decomposition import PCA

                pca = PCA(n_components=n_components, random_state=self.random_state)
                X = pca.fit_transform(X)
                self.pca_mean_ = pca.mean_.astype(np.float32)
                self.pca_components_ = pca.components_.astype(np.float32)
                self.info_["explained_variance_ratio"] = float(pca.explained_variance_ratio_.sum())
            else:
                X = self._fit_umap(X)
                self.info_.update(
                    umap_params=dict(UMAP_PARAMS), umap_fit_size=len(self.umap_fit_rows_),
                    umap_random_state=self.random_state,
                )
            self.info_["n_components"] = n_components
        self.info_["dim"] = int(X.shape[1])
        return np.ascontiguousarray(X, dtype=np.float32)

    def _fit_umap(self, X):
        """Fits the UMAP on (a sample of) the rows of ``X``; returns them all mapped."""
        n = len(X)
        if n > self.umap_fit_size:
            rows = np.sort(np.random.default_rng(self.random_state).choice(n, self.umap_fit_size, replace=False))
        else:
            rows = np.arange(n)
        self.umap_fit_rows_ = rows
        self._umap = self._new_umap(len(rows)).fit(X[rows])
        if len(rows) == n:
            return self._umap.embedding_
        out = np.empty((n, self.n_components), dtype=np.float32)
        others = np.setdiff1d(np.arange(n), rows)
        out[rows] = self._umap.embedding_
        for s in range(0, len(others), _BLOCK_ROWS):
            chunk = others[s : s + _BLOCK_ROWS]
            out[chunk] = self._umap.transform(X[chunk])
        return out

    def refit_umap(self, X_fit):
        """Fits the UMAP again on the rows it was fitted on (raw embeddings, in
        the same order): the same mapping, its seed making it deterministic.
        Returns their coordinates (as the run got them)."""
        X_fit = self._normalized(np.asarray(X_fit, dtype=np.float32), copy=True)
        self._umap = self._new_umap(len(X_fit)).fit(X_fit)
        return np.ascontiguousarray(self._umap.embedding_, dtype=np.float32)

    def transform(self, X, copy=True):
        """The fitted mapping applied to new rows ``X`` (float32 result;
        ``copy=False`` lets it normalize a float32 ``X`` in place)."""
        X = self._normalized(np.asarray(X, dtype=np.float32), copy)
        if self.reduction == "pca":
            if self.pca_components_ is None:
                raise ValueError("This FeatureTransform's PCA is not fitted")
            X = (X - self.pca_mean_) @ self.pca_components_.T
        elif self.reduction == "umap":
            if self._umap is None:
                raise ValueError("This FeatureTransform's UMAP is not fitted (refit_umap fits it again)")
            X = self._umap.transform(X) if len(X) else np.zeros((0, self.n_components), dtype=np.float32)
        return np.ascontiguousarray(X, dtype=np.float32)

    def state(self):
        """Arrays needed to re-apply the transform later (stored with a run)."""
        coords = None if self._umap is None else np.asarray(self._umap.embedding_, dtype=np.float32)
        return {"pca_mean": self.pca_mean_, "pca_components": self.pca_components_, "umap_fit_coords": coords}

    @classmethod
    def from_state(cls, config, pca_mean=None, pca_components=None):
        """The transform a run (its ``config`` and stored state) applied (a
        UMAP still to be refitted)."""
        reduction = config.reduction or "none"
        transform = cls(
            config.normalize,
            reduction,
            config.n_components,
            getattr(config, "umap_random_state", None) or getattr(config, "random_state", None),
        )
        if reduction == "pca" and pca_components is not None:
            transform.pca_mean_ = np.asarray(pca_mean, dtype=np.float32)
            transform.pca_components_ = np.asarray(pca_components, dtype=np.float32)
        return transform


def prepare_features(X, normalize=False, reduction="none", n_components=None, random_state=None):
    """Applies optional L2 normalization then PCA or UMAP. Returns the new matrix
    and a JSON-friendly dict describing what was done (see
    :class:`FeatureTransform` to keep the fitted mapping)."""
    transform = FeatureTransform(normalize, reduction, n_components, random_state)
    return transform.fit_transform(X), transform.info_
