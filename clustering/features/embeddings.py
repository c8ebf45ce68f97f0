"""FiftyOne-facing embeddings: compute a vector field for a dataset or view.

Built-in backbones (:mod:`clustering.features.backbones`, e.g. the offline default
``efficientnet-lite0``, ``vgg16``, ``resnet50``) run through this plugin's batched
pipeline; ``zoo:<name>`` runs any FiftyOne Model Zoo model with embeddings
(``zoo:clip-vit-base32-torch``, ``zoo:dinov2-vits14-torch``, ...) through
FiftyOne's own ``compute_embeddings`` (downloaded on first use).

Results are written batch by batch, by sample id, on the root dataset (through
:mod:`clustering.runs.storage`), so a view's excluded fields, filtered labels or
other stages never affect what is saved. Only two fields are written: the vector field and, on samples whose image
could not be embedded, ``{embeddings_field}_error`` (a string; cleared when a
later run succeeds). With ``patches_field``, the crops of a ``Detections`` field
are embedded instead and stored on the labels (:mod:`clustering.features.patches`).

To embed on several machines, the ``compute_embeddings`` operator splits a
delegated run into shards (:mod:`clustering.features.shards`).
"""

import logging
import time

import numpy as np

from . import backbones as bb
from ..runs import storage
from .models import (  # noqa: F401 (model names stay importable from here)
    DEFAULT_MODEL,
    MAX_REPORTED_FAILURES,
    available_models,
    default_embeddings_field,
    field_model,
    load_zoo_model,
    model_description,
    read_error,
    stamp_field,
    type_name,
    validate_field_name,
    validate_model,
)

logger = logging.getLogger(__name__)

ERROR_SUFFIX = "_error"

# --------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------


def _check_field_types(dataset, field, error_field):
    import fiftyone as fo

    schema = dataset.get_field_schema(flat=True)
    ftype = schema.get(field)
    if ftype is not None and not isinstance(ftype, (fo.VectorField, fo.ArrayField)):
        raise ValueError(
            f"Field '{field}' exists with type {type_name(ftype)}; choose "
            "another embeddings field (a vector field is needed)"
        )
    etype = schema.get(error_field)
    if etype is not None and not isinstance(etype, fo.StringField):
        raise ValueError(
            f"Field '{error_field}' exists with type {type_name(etype)}; it is "
            "needed for failure messages: choose another embeddings field"
        )
    return ftype is not None, etype is not None


def _existing_dim(samples, field):
    for value in samples.exists(field).limit(1).values(field):
        if value is not None:
            return int(np.asarray(value).size)
    return None


# --------------------------------------------------------------------------
# Compute
# --------------------------------------------------------------------------


class _Writer:
    """Writes vectors and failure markers by sample id on the root dataset
    (through :class:`clustering.runs.storage.BatchWriter`, one write per
    ``flush_every`` samples); tracks counts."""

    def __init__(self, dataset, field, error_field, had_errors, error_exists, flush_every=256):
        self.dataset = dataset
        self.field = field
        self.error_field = error_field
        self.error_exists = error_exists
        self.had_errors = had_errors  # ids with an error marker from an earlier run
        self.num_embedded = 0
        self.failures = {}
        self.dim = None
        self._batch = storage.BatchWriter(dataset, flush_every=flush_every)

    def write(self, ids, vectors, failures):
        """``ids``/``vectors``: embedded samples; ``failures``: {id: message}."""
        if len(ids):
            self.dim = self.dim or int(np.asarray(vectors[0]).size)
            columns = {self.field: [np.asarray(v, dtype=np.float32) for v in vectors]}
            if self.had_errors:  # clear the markers of an earlier run
                columns[self.error_field] = [None if i in self.had_errors else storage.SKIP for i in ids]
            self._batch.add(ids, columns)
            self.num_embedded += len(ids)
        if failures:
            if not self.error_exists:  # created on the first failure only
                import fiftyone as fo

                self.dataset.add_sample_field(
                    self.error_field,
                    fo.StringField,
                    description=f"Why '{self.field}' could not be computed",
                )
                self.error_exists = True
            self._batch.add(
                list(failures), {self.field: [None] * len(failures), self.error_field: list(failures.values())}
            )
            self.failures.update(failures)
            self.flush()

    def flush(self):
        self._batch.flush()


def compute_embeddings(
    samples,
    model=DEFAULT_MODEL,
    embeddings_field="embeddings",
    patches_field=None,
    batch_size=None,
    num_workers=None,
    device="auto",
    overwrite=True,
    skip_failures=True,
    progress=None,
    force_square=False,
    alpha=None,
    precision="auto",
):
    """Computes image embeddings for ``samples`` and stores them in
    ``embeddings_field``, or, with ``patches_field``, embeddings of the object
    crops of that ``Detections`` field stored on each label (see
    :func:`clustering.features.patches.compute_patch_embeddings`).

    Args:
        samples: a FiftyOne image dataset or view (only its samples are
            embedded; the view's other stages never affect what is saved)
        model ("efficientnet-lite0"): a name from :func:`available_models` or
            ``"zoo:<FiftyOne zoo model>"``
        embeddings_field ("embeddings"): the vector field to write
        patches_field (None): a ``Detections`` field: embed its boxes instead
            and store each vector in ``{patches_field}.detections.{embeddings_field}``
        batch_size (None): images per forward pass (device-dependent default)
        num_workers (None): image-decoding worker processes (default: from
            the CPU count and device)
        device ("auto"): "auto", "cpu", "cuda", "cuda:N" or "mps"
        precision ("auto"): built-in models: ``"fp32"``, ``"bf16"``,
            ``"fp16"`` (GPUs), or ``"auto"``: fp16 on CUDA, bf16 on CPUs with
            bfloat16 units, AMX or AVX512-BF16 (1.4-2.4x faster; cosine
            similarity to fp32 at least 0.994 on real photos), fp32 elsewhere
        overwrite (True): recompute samples that already have a value; when
            False only samples missing ``embeddings_field`` are embedded
        skip_failures (True): mark unreadable images in
            ``{embeddings_field}_error`` and go on; when False raise
            ``RuntimeError`` at the first failure (earlier batches stay written)
        progress (None): None or True (a progress bar), False (silent), or a
            callable ``progress(fraction, message)``
        force_square (False): patches only: grow each box into a square
        alpha (None): patches only: pad (``> 0``) or shrink (``< 0``) each box
            by ``100 * alpha`` percent of its size

    Returns:
        a summary dict: ``model``, ``field``, ``error_field``, ``dim``,
        ``num_samples`` (in ``samples``), ``num_embedded``, ``num_failed``,
        ``num_skipped`` (already embedded, ``overwrite=False``), ``failed_ids``
        and ``errors`` (first 20), ``seconds``, ``device``
    """
    import fiftyone.core.media as fom

    from ..progress import progress_or_bar

    if patches_field is not None:
        from .patches import compute_patch_embeddings

        return compute_patch_embeddings(
            samples, model, embeddings_field, patches_field, batch_size=batch_size,
            num_workers=num_workers, device=device, overwrite=overwrite, skip_failures=skip_failures,
            force_square=force_square, alpha=alpha, progress=progress, precision=precision,
        )
    if force_square or alpha is not None:
        raise ValueError("force_square and alpha apply to patch embeddings only: pass patches_field")

    t0 = time.perf_counter()
    kind, name = validate_model(model)
    validate_field_name(embeddings_field)
    error_field = embeddings_field + ERROR_SUFFIX
    media_type = samples.media_type
    if media_type == fom.GROUP:
        raise ValueError(
            "This is a grouped collection; select an image slice first, e.g. "
            "samples.select_group_slices('left')"
        )
    if media_type != fom.IMAGE:
        raise ValueError(f"Embeddings need an image collection; this one has media type '{media_type}'")
    if samples._is_generated or samples._is_dynamic_groups:
        raise ValueError(
            "Patches, frames, clips and dynamic-group views are not supported: embed "
            "the images of the underlying dataset (or a view of it) instead, or its "
            "object patches with patches_field='<Detections field>'"
        )
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError("batch_size must be >= 1")
    if num_workers is not None and int(num_workers) < 0:
        raise ValueError("num_workers must be >= 0")
    if kind == "builtin":
        bb.resolve_precision(device, precision)  # fails early on a bad device or precision

    dataset = samples._root_dataset
    exists, error_exists = _check_field_types(dataset, embeddings_field, error_field)

    num_samples = len(samples)
    target = samples
    if exists and not overwrite:
        target = samples.exists(embeddings_field, False)
    ids, filepaths = target.values(["id", "filepath"])
    num_skipped = num_samples - len(ids)

    if exists:
        # refuse to mix embeddings of different models in one field
        previous = field_model(dataset, embeddings_field)
        untouched = dataset.exists(embeddings_field).count() - target.exists(embeddings_field).count()
        expected_dim = bb.get_spec(name).dim if kind == "builtin" else None
        have_dim = _existing_dim(dataset, embeddings_field) if untouched else None
        if untouched and ids and (
            (previous is not None and previous != model)
            or (expected_dim is not None and have_dim is not None and have_dim != expected_dim)
        ):
            raise ValueError(
                f"Field '{embeddings_field}' holds embeddings of "
                f"{repr(previous) if previous else f'another model ({have_dim}-d)'} on "
                f"{untouched} samples outside this computation; embedding the others "
                f"with '{model}' would mix models. Choose another field or recompute all samples."
            )

    runner = None
    if ids:
        # load the model before touching the schema (missing weights fail here)
        runner = bb.get_backbone(name, device, precision) if kind == "builtin" else load_zoo_model(name, device)

    if not exists:
        import fiftyone as fo

        dataset.add_sample_field(
            embeddings_field, fo.VectorField, description=f"Image embeddings ({model})"
        )
    had_errors = set()
    if error_exists and ids:
        had_errors = set(target.exists(error_field).values("id"))

    writer = _Writer(dataset, embeddings_field, error_field, had_errors, error_exists)
    summary = {
        "model": model,
        "field": embeddings_field,
        "error_field": error_field,
        "num_samples": num_samples,
        "num_skipped": num_skipped,
    }

    if ids:
        with progress_or_bar(progress, f"Embedding ({model})") as report:
            try:
                if kind == "builtin":
                    info = _compute_builtin(
                        runner, ids, filepaths, writer, batch_size, num_workers, skip_failures, report
                    )
                else:
                    info = _compute_zoo(
                        runner, name, dataset, ids, filepaths, writer, batch_size, num_workers, device,
                        skip_failures, report,
                    )
            finally:
                writer.flush()  # keep what was computed, even on errors
            report(1.0, f"{writer.num_embedded} embedded, {len(writer.failures)} failed")
        summary.update(info)
        dim = writer.dim or summary.get("dim")
        stamp_field(dataset, embeddings_field, model, dim)
    else:
        info = {"device": None, "precision": None, "batch_size": None, "num_workers": None}
        summary.update(info)
        dim = _existing_dim(samples, embeddings_field) if exists else None
        if dim is None and kind == "builtin":
            dim = bb.get_spec(name).dim

    failed_ids = list(writer.failures)
    seconds = time.perf_counter() - t0
    summary.update(
        {
            "dim": dim,
            "num_embedded": writer.num_embedded,
            "num_failed": len(failed_ids),
            "failed_ids": failed_ids[:MAX_REPORTED_FAILURES],
            "failed_ids_truncated": len(failed_ids) > MAX_REPORTED_FAILURES,
            "errors": {i: writer.failures[i] for i in failed_ids[:MAX_REPORTED_FAILURES]},
            "seconds": round(seconds, 3),
            "images_per_second": round(len(ids) / seconds, 2) if ids and seconds > 0 else None,
        }
    )
    if failed_ids:
        logger.warning(
            "%d of %d images could not be embedded (see field '%s'), e.g. %s",
            len(failed_ids),
            len(ids),
            error_field,
            next(iter(summary["errors"].values())),
        )
    return summary


def _raise_failure(failures):
    sample_id, message = next(iter(failures.items()))
    raise RuntimeError(
        f"Could not embed sample {sample_id}: {message} (pass skip_failures=True to "
        "mark failures and continue)"
    )


def _compute_builtin(backbone, ids, filepaths, writer, batch_size, num_workers, skip_failures, report):
    dev = backbone.device
    batch_size = int(batch_size or bb.default_batch_size(dev))
    for batch in bb.iter_embeddings(
        filepaths,
        backbone,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=report,
    ):
        failures = {ids[i]: msg for i, msg in batch.failed.items()}
        writer.write([ids[i] for i in batch.indices], batch.embeddings, failures)
        if failures and not skip_failures:
            _raise_failure(failures)
    workers = bb.resolve_num_workers(len(ids), batch_size, dev, num_workers)
    return {
        "device": str(dev),
        "precision": backbone.precision,
        "batch_size": batch_size,
        "num_workers": workers,
        "dim": backbone.dim,
    }


def _compute_zoo(model, name, dataset, ids, filepaths, writer, batch_size, num_workers, device, skip_failures, report):
    n = len(ids)
    batch = int(batch_size or 32)
    chunk = max(256, 8 * batch)
    options = {"batch_size": batch, "skip_failures": True, "progress": False}
    if num_workers is not None:
        options["num_workers"] = int(num_workers)
    done = 0
    for start in range(0, n, chunk):
        cids = ids[start : start + chunk]
        cpaths = filepaths[start : start + chunk]
        embs = list(dataset.select(cids, ordered=True).compute_embeddings(model, **options))
        bad = [j for j, e in enumerate(embs) if e is None]
        if bad and batch > 1:
            # FiftyOne fails whole batches; isolate the unreadable images
            retry = dataset.select([cids[j] for j in bad], ordered=True).compute_embeddings(
                model, batch_size=1, skip_failures=True, progress=False
            )
            for j, e in zip(bad, retry):
                embs[j] = e
        ok = [j for j, e in enumerate(embs) if e is not None]
        failures = {
            cids[j]: read_error(cpaths[j]) or f"zoo model '{name}' failed on this image"
            for j, e in enumerate(embs)
            if e is None
        }
        writer.write([cids[j] for j in ok], [embs[j] for j in ok], failures)
        if failures and not skip_failures:
            _raise_failure(failures)
        done += len(cids)
        report(done / n, f"{done}/{n} images")
    return {"device": str(getattr(model, "device", device)), "batch_size": batch, "num_workers": num_workers}


def ensure_embeddings(samples, embeddings_field, model=DEFAULT_MODEL, progress=None, **kwargs):
    """Computes ``model`` embeddings only for the samples of ``samples`` that
    lack ``embeddings_field`` (all of them if the field does not exist).
    Refuses to mix models in one field. Returns the summary of
    :func:`compute_embeddings` (``num_embedded == 0`` when nothing was missing).
    """
    kwargs.pop("overwrite", None)
    return compute_embeddings(
        samples,
        model=model,
        embeddings_field=embeddings_field,
        overwrite=False,
        progress=progress,
        **kwargs,
    )
