"""Feature matrices for clustering: checking embeddings, and optional
normalization / PCA / UMAP reduction."""

import numpy as np

REDUCTIONS = ("none", "pca", "umap")


def check_finite(X, source="embeddings"):
    """Raises ``ValueError`` giving the count of rows with NaN or infinite values."""
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(X)} rows of {source} contain NaN or "
            "infinite values; fix or remove them before clustering"
        )


def as_matrix(rows, source="embeddings"):
    """Stacks per-sample vectors into a float32 (n, d) matrix, naming the
    problem when their dimensions differ."""
    dims = {np.asarray(r).size for r in rows}
    if len(dims) > 1:
        raise ValueError(
            f"{source} have mismatched dimensions {sorted(dims)}; all vectors "
            "must have the same length"
        )
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


def prepare_features(X, normalize=False, reduction="none", n_components=None, random_state=None):
    """Applies optional L2 normalization then PCA or UMAP. Returns the new matrix
    and a JSON-friendly dict describing what was done."""
    reduction = reduction or "none"
    if reduction not in REDUCTIONS:
        raise ValueError(f"Unknown reduction '{reduction}'; choose one of {REDUCTIONS}")
    info = {"normalize": bool(normalize), "reduction": reduction, "input_dim": int(X.shape[1])}
    if normalize:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.maximum(norms, 1e-12)
    if reduction != "none":
        if not n_components or n_components < 1:
            raise ValueError(f"{reduction.upper()} needs n_components >= 1")
        limit = min(X.shape) if reduction == "pca" else X.shape[1]
        if n_components > limit:
            raise ValueError(
                f"n_components={n_components} is larger than the {reduction.upper()} "
                f"limit {limit} for {X.shape[0]} samples of dimension {X.shape[1]}"
            )
        if reduction == "pca":
            from sklearn.decomposition import PCA

            pca = PCA(n_components=n_components, random_state=random_state)
            X = pca.fit_transform(X)
            info["explained_variance_ratio"] = float(pca.explained_variance_ratio_.sum())
        else:
            import umap

            X = umap.UMAP(n_components=n_components, random_state=random_state).fit_transform(X)
        info["n_components"] = int(n_components)
    info["dim"] = int(X.shape[1])
    return np.ascontiguousarray(X, dtype=np.float32), info
