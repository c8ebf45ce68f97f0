"""Patch embeddings: embed the object crops of a ``Detections`` field and store
each vector on its ``Detection``, as ``detection[embeddings_field]``.

Each image is decoded once (large JPEGs at a reduced DCT scale when every box
stays at least the model's input size), all its boxes are cropped and resized
in worker processes, and the crops run through the model in batches. Vectors are
written batch by batch with label-level updates (by sample and label id) on the
root dataset (through :mod:`clustering.runs.storage`), so a view's excluded fields, filtered labels or other stages never
affect what is saved; only the ``{patches_field}.detections.{embeddings_field}``
attribute is written. ``zoo:`` models run through FiftyOne's
``compute_patch_embeddings``.

Boxes are relative ``[x, y, w, h]``: they are clipped to the image; boxes with
no area inside it (or no valid coordinates) are counted as degenerate and get
no vector. ``alpha`` pads (or shrinks) each box by ``100 * alpha`` percent of
its size and ``force_square`` grows it into a square, as in FiftyOne.
"""

import io
import math
import time
import warnings

import numpy as np
import torch

from . import backbones as bb
from . import models
from ..runs import storage

_JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------


def relative_box(box, alpha=None):
    """``[x, y, w, h]`` -> clipped ``(x1, y1, x2, y2)`` in ``[0, 1]`` after
    the optional ``alpha`` padding; None when the box has no area in the image."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(map(math.isfinite, (x, y, w, h))):
        return None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, 1.0), min(y + h, 1.0)
    if x2 <= x1 or y2 <= y1:
        return None
    if alpha:
        dx, dy = 0.5 * alpha * (x2 - x1), 0.5 * alpha * (y2 - y1)
        x1, y1, x2, y2 = max(x1 - dx, 0.0), max(y1 - dy, 0.0), min(x2 + dx, 1.0), min(y2 + dy, 1.0)
    return x1, y1, x2, y2


def _square(a1, a2, b1, b2, amax, bmax):
    """Grows the shorter side ``[a1, a2)`` (clamped to ``amax``) to the length of
    ``[b1, b2)``, shrinking the latter if the image is too small (FiftyOne's rule)."""
    grow = (b2 - b1) - (a2 - a1)
    shrink = min(0, amax - grow - (a2 - a1))

    def pad(z1, z2, dz, zmax):
        d1 = int(0.5 * dz)
        d2 = dz - d1
        shift = max(0, d1 - z1) - max(0, z2 + d2 - zmax)
        return z1 - d1 + shift, z2 + d2 + shift

    return (*pad(a1, a2, grow + shrink, amax), *pad(b1, b2, shrink, bmax))


def pixel_box(rel, width, height, force_square=False):
    """Relative ``(x1, y1, x2, y2)`` -> integer pixel ``(x1, y1, x2, y2)``, at
    least one pixel wide and high."""
    x1 = min(int(rel[0] * width), width - 1)
    y1 = min(int(rel[1] * height), height - 1)
    x2 = min(max(int(rel[2] * width), x1 + 1), width)
    y2 = min(max(int(rel[3] * height), y1 + 1), height)
    if force_square and x2 - x1 != y2 - y1:
        if x2 - x1 < y2 - y1:
            x1, x2, y1, y2 = _square(x1, x2, y1, y2, width, height)
        else:
            y1, y2, x1, x2 = _square(y1, y2, x1, x2, height, width)
    return x1, y1, x2, y2


# --------------------------------------------------------------------------
# Decoding and cropping
# --------------------------------------------------------------------------


def decode_image(path, min_box_side=None, size=224):
    """Decodes ``path`` to a ``(3, H, W)`` uint8 RGB tensor (EXIF orientation
    applied). A JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
    when its smallest box side (relative) keeps at least ``size`` pixels."""
    from torchvision.io import ImageReadMode, decode_image as tv_decode

    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"Empty file: {path}")
    if data[:3].tobytes() == _JPEG_MAGIC and min_box_side:
        try:
            pil = _open_pil(data)
            w, h = pil.size  # from the header
            scale = size / (min_box_side * min(w, h))  # a lower bound of a box side
        except Exception:
            scale = 1.0  # unreadable header: fail (or succeed) below
        if scale < 0.5:
            pil.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            return _pil_tensor(pil)
    try:
        img = tv_decode(torch.from_numpy(data), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except Exception:  # formats torchvision cannot decode (raises for non-images)
        return _pil_tensor(_open_pil(data))
    return bb.as_uint8_frame(img).contiguous()


def _open_pil(data):
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(io.BytesIO(data.tobytes()))


def _pil_tensor(pil):
    from PIL import ImageOps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pil = ImageOps.exif_transpose(pil).convert("RGB")
    return torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def crop_boxes(image, boxes, size, force_square=False):
    """Crops relative ``(x1, y1, x2, y2)`` boxes from a ``(3, H, W)`` uint8 image
    and resizes each (antialiased bilinear, as whole images) to ``(3, size, size)``."""
    height, width = image.shape[-2:]
    crops = torch.empty((len(boxes), 3, size, size), dtype=torch.uint8)
    for j, rel in enumerate(boxes):
        x1, y1, x2, y2 = pixel_box(rel, width, height, force_square)
        crop = image[:, y1:y2, x1:x2]
        if crop.shape[-2:] != (size, size):
            crop = torch.nn.functional.interpolate(
                crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )[0]
        crops[j] = crop
    return crops


class PatchChunks(torch.utils.data.Dataset):
    """Item ``c`` is chunk ``c``: each of its images decoded once and all its
    boxes cropped, as ``(patch indices, uint8 crops, {sample index: error})``;
    with a ``backbone`` (CPU replicas) the crops are embedded in the worker."""

    def __init__(self, filepaths, patches, chunks, size, force_square=False, backbone=None, batch_size=None):
        self.filepaths = filepaths
        self.patches = patches  # per sample: [(patch index, relative box), ...]
        self.chunks = chunks  # lists of sample indices
        self.size = size
        self.force_square = force_square
        self.backbone = backbone
        self.batch_size = batch_size

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, c):
        indices, crops, errors = [], [], {}
        for s in self.chunks[c]:
            patches = self.patches[s]
            boxes = [box for _, box in patches]
            min_side = min(min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes)
            try:
                image = decode_image(self.filepaths[s], min_side, self.size)
            except Exception as e:  # reported per image, the run continues
                errors[s] = bb._describe(e)
                continue
            crops.append(crop_boxes(image, boxes, self.size, self.force_square))
            indices.extend(i for i, _ in patches)
        indices = torch.tensor(indices, dtype=torch.int64)
        crops = torch.cat(crops) if crops else torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        if self.backbone is not None and len(indices):
            with torch.inference_mode():
                return indices, embed_crops(self.backbone, crops, self.batch_size), errors
        return indices, crops, errors


def embed_crops(backbone, crops, batch_size):
    """Runs uint8 crops through ``backbone`` in batches of ``batch_size``."""
    return torch.cat([backbone.forward_uint8(crops[i : i + batch_size]) for i in range(0, len(crops), batch_size)])


def plan_chunks(counts, batch_size):
    """Groups consecutive samples into chunks of about ``batch_size`` patches
    (a sample is never split, so its image is decoded once)."""
    chunks, current, n = [], [], 0
    for s, count in enumerate(counts):
        if not count:
            continue
        current.append(s)
        n += count
        if n >= batch_size:
            chunks.append(current)
            current, n = [], 0
    if current:
        chunks.append(current)
    return chunks


def iter_patch_embeddings(
    filepaths, patches, backbone, batch_size, num_workers=None, force_square=False, progress=None
):
    """Yields ``(patch indices, float32 embeddings, {sample index: error})`` per
    chunk, in order. ``patches[s]`` lists ``(patch index, relative box)`` of
    sample ``s``; at most a few chunks of crops are in memory at a time."""
    device = backbone.device
    chunks = plan_chunks([len(p) for p in patches], batch_size)
    total = sum(len(p) for p in patches)
    if not chunks:
        return
    replicas = bb.resolve_strategy(device) == "replicas"
    workers = bb.resolve_num_workers(len(chunks), 1, device, num_workers)
    kwargs = {}
    if workers > 0:
        kwargs = {"prefetch_factor": 4 if device.type == "cuda" else 2, "timeout": bb.WORKER_TIMEOUT}
        if replicas:
            kwargs["worker_init_fn"] = bb._retain_freed_memory
    dataset = PatchChunks(
        filepaths, patches, chunks, backbone.image_size, force_square,
        backbone if replicas else None, batch_size,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda" and not replicas,
        **kwargs,
    )
    done = 0

    def finish(indices, out, errors):
        nonlocal done
        emb = out.cpu().numpy() if len(indices) else np.empty((0, backbone.dim), np.float32)
        done += len(indices) + sum(len(patches[s]) for s in errors)
        if progress is not None:
            progress(done / total, f"{done}/{total} patches")
        return indices.numpy(), np.ascontiguousarray(emb, np.float32), errors

    pending = None
    with torch.inference_mode():
        for indices, out, errors in loader:
            if len(indices) and not replicas:
                out = embed_crops(backbone, out, batch_size)
            # on CUDA the GPU runs this chunk while the previous one is copied back
            if pending is not None:
                yield finish(*pending)
            pending = (indices, out, errors)
        if pending is not None:
            yield finish(*pending)


# --------------------------------------------------------------------------
# FiftyOne
# --------------------------------------------------------------------------


def detections_fields(samples):
    """Names of the ``Detections`` fields of ``samples`` (patch sources)."""
    import fiftyone as fo

    return sorted(samples.get_field_schema(embedded_doc_type=fo.Detections))


def validate_patches_field(samples, patches_field):
    """Raises ``ValueError`` unless ``patches_field`` is a ``Detections`` field."""
    import fiftyone as fo

    choices = ", ".join(detections_fields(samples)) or "none on this collection"
    ftype = samples.get_field_schema().get(patches_field)
    if ftype is None:
        raise ValueError(f"Patches field '{patches_field}' does not exist; Detections fields: {choices}")
    doc = getattr(ftype, "document_type", None)
    if not (isinstance(ftype, fo.EmbeddedDocumentField) and issubclass(doc, fo.Detections)):
        raise ValueError(
            f"Patches field '{patches_field}' has type {models.type_name(ftype)}; patches need "
            f"a Detections field (bounding boxes). Detections fields: {choices}"
        )


class _LabelWriter:
    """Writes vectors on labels (by sample and label id) on the root dataset
    (through :class:`clustering.runs.storage.BatchWriter`, one write per
    ``flush_every`` patches); counts them."""

    def __init__(self, dataset, path, patches_field, flush_every=1024):
        self.path = path
        self.num_embedded = 0
        self.dim = None
        self._batch = storage.BatchWriter(dataset, patches_field=patches_field, flush_every=flush_every)

    def write(self, sample_ids, label_ids, vectors):
        """Sets ``vectors`` (None clears) on the labels; aligned lists."""
        values = []
        for v in vectors:
            if v is not None:
                v = np.asarray(v, dtype=np.float32)
                self.dim = self.dim or int(v.size)
                self.num_embedded += 1
            values.append(v)
        self._batch.add(list(label_ids), {self.path: values}, sample_ids=list(sample_ids))

    def flush(self):
        self._batch.flush()


def compute_patch_embeddings(
    samples,
    model,
    embeddings_field,
    patches_field,
    batch_size=None,
    num_workers=None,
    device="auto",
    overwrite=True,
    skip_failures=True,
    force_square=False,
    alpha=None,
    progress=None,
    precision="auto",
):
    """Embeds the boxes of ``patches_field`` and stores each vector on its
    label, in ``{patches_field}.detections.{embeddings_field}``.

    Arguments are those of :func:`clustering.features.embeddings.compute_embeddings`
    plus ``force_square`` and ``alpha`` (box padding, ``> -1``). Only the
    labels in ``samples`` are embedded (a filtered view embeds its labels).

    Returns:
        a summary dict: ``model``, ``field`` (the label attribute path),
        ``patches_field``, ``dim``, ``num_samples``, ``num_patches`` (labels in
        ``samples``), ``num_embedded``, ``num_skipped`` (already embedded,
        ``overwrite=False``), ``num_degenerate`` (no area inside the image),
        ``num_failed`` (patches of unreadable images), ``num_failed_images``,
        ``failed_ids``/``errors`` (sample ids, first 20), ``seconds``,
        ``patches_per_second``, ``device``, ``batch_size``, ``num_workers``
    """
    import fiftyone as fo
    import fiftyone.core.media as fom
    from fiftyone import ViewField as F

    from ..progress import progress_or_bar

    t0 = time.perf_counter()
    kind, name = models.validate_model(model)
    models.validate_field_name(embeddings_field)
    if samples.media_type != fom.IMAGE:
        raise ValueError(f"Patch embeddings need an image collection; this one has media type '{samples.media_type}'")
    if samples._is_generated or samples._is_dynamic_groups:
        raise ValueError(
            "Patches, frames, clips and dynamic-group views are not supported: pass the "
            "source dataset (or a view of it) with patches_field"
        )
    validate_patches_field(samples, patches_field)
    if alpha is not None and not float(alpha) > -1:
        raise ValueError(f"alpha must be > -1 (a relative padding of the boxes); got {alpha}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError("batch_size must be >= 1")
    if num_workers is not None and int(num_workers) < 0:
        raise ValueError("num_workers must be >= 0")
    if kind == "builtin":
        bb.resolve_precision(device, precision)  # fails early on a bad device or precision

    dataset = samples._root_dataset
    labels_path = f"{patches_field}.detections"
    path = f"{labels_path}.{embeddings_field}"
    ftype = dataset.get_field_schema(flat=True).get(path)
    if ftype is not None and not isinstance(ftype, (fo.VectorField, fo.ArrayField)):
        raise ValueError(
            f"Label attribute '{path}' exists with type {models.type_name(ftype)}; choose "
            "another embeddings field (a vector attribute is needed)"
        )

    num_samples = len(samples)
    num_patches = samples.count(labels_path)
    target = samples
    if ftype is not None and not overwrite:
        target = samples.filter_labels(patches_field, F(embeddings_field) == None, only_matches=True)  # noqa: E711
    sample_ids, filepaths, label_ids, boxes = target.values(
        ["id", "filepath", f"{labels_path}.id", f"{labels_path}.bounding_box"]
    )
    refs, patches, degenerate = [], [], []
    for s, (sid, lids, bxs) in enumerate(zip(sample_ids, label_ids, boxes)):
        own = []
        for lid, box in zip(lids or [], bxs or []):
            rel = relative_box(box, alpha)
            if rel is None:
                degenerate.append((sid, lid))
            else:
                own.append((len(refs), rel))
                refs.append((sid, lid))
        patches.append(own)
    num_target = len(refs) + len(degenerate)

    if ftype is not None and refs:
        # refuse to mix embeddings of different models in one attribute
        previous = models.field_model(dataset, path)
        untouched = dataset.count(path) - (target.count(path) if overwrite else 0)
        if untouched and previous is not None and previous != model:
            raise ValueError(
                f"Attribute '{path}' holds embeddings of {previous!r} on {untouched} labels "
                f"outside this computation; embedding the others with '{model}' would mix "
                "models. Choose another field or recompute all labels."
            )

    runner = None
    if refs:
        runner = bb.get_backbone(name, device, precision) if kind == "builtin" else models.load_zoo_model(name, device)
    if ftype is None and num_target:
        dataset.add_sample_field(path, fo.VectorField, description=f"Patch embeddings ({model})")

    writer = _LabelWriter(dataset, path, patches_field)
    if degenerate:
        writer.write(*zip(*degenerate), [None] * len(degenerate))
    failures = {}
    info = {"device": None, "precision": None, "batch_size": None, "num_workers": None}
    if refs:
        with progress_or_bar(progress, f"Embedding patches ({model})") as report:
            try:
                if kind == "builtin":
                    info = _compute_builtin(
                        runner, refs, sample_ids, filepaths, patches, writer, failures,
                        batch_size, num_workers, force_square, skip_failures, report,
                    )
                else:
                    info = _compute_zoo(
                        runner, name, dataset, patches_field, refs, sample_ids, filepaths, patches,
                        writer, failures, batch_size, num_workers, force_square, alpha, skip_failures,
                        report,
                    )
            finally:
                writer.flush()  # keep what was computed, even on errors
            report(1.0, f"{writer.num_embedded} patches embedded, {len(failures)} images failed")
    dim = writer.dim or (bb.get_spec(name).dim if kind == "builtin" else None)
    if writer.num_embedded:
        models.stamp_field(dataset, path, model, dim)

    seconds = time.perf_counter() - t0
    failed_ids = list(failures)
    shown = failed_ids[: models.MAX_REPORTED_FAILURES]
    num_failed = sum(len(patches[s]) for _, s in failures.values())
    return {
        "model": model,
        "field": path,
        "patches_field": patches_field,
        "dim": dim,
        "num_samples": num_samples,
        "num_patches": num_patches,
        "num_embedded": writer.num_embedded,
        "num_skipped": num_patches - num_target,
        "num_degenerate": len(degenerate),
        "num_failed": num_failed,
        "num_failed_images": len(failed_ids),
        "failed_ids": shown,
        "failed_ids_truncated": len(failed_ids) > len(shown),
        "errors": {i: failures[i][0] for i in shown},
        "seconds": round(seconds, 3),
        "patches_per_second": round(len(refs) / seconds, 2) if refs and seconds > 0 else None,
        **info,
    }


def _fail(failures, writer, refs, sample_ids, patches, errors, skip_failures):
    """Records unreadable images and clears their labels' vectors."""
    for s, message in errors.items():
        failures[sample_ids[s]] = (message, s)
        writer.write(*zip(*(refs[i] for i, _ in patches[s])), [None] * len(patches[s]))
    if errors and not skip_failures:
        s, message = next(iter(errors.items()))
        raise RuntimeError(
            f"Could not embed the patches of sample {sample_ids[s]}: {message} (pass "
            "skip_failures=True to skip unreadable images and continue)"
        )


def _compute_builtin(
    backbone, refs, sample_ids, filepaths, patches, writer, failures,
    batch_size, num_workers, force_square, skip_failures, report,
):
    dev = backbone.device
    batch_size = int(batch_size or bb.default_batch_size(dev))
    for indices, emb, errors in iter_patch_embeddings(
        filepaths, patches, backbone, batch_size, num_workers, force_square, report
    ):
        finite = np.isfinite(emb).all(axis=1)
        writer.write(
            [refs[i][0] for i in indices],
            [refs[i][1] for i in indices],
            [v if ok else None for v, ok in zip(emb, finite)],
        )
        _fail(failures, writer, refs, sample_ids, patches, errors, skip_failures)
    chunks = len(plan_chunks([len(p) for p in patches], batch_size))
    workers = bb.resolve_num_workers(chunks, 1, dev, num_workers)
    return {"device": str(dev), "precision": backbone.precision, "batch_size": batch_size, "num_workers": workers}


def _compute_zoo(
    model, name, dataset, patches_field, refs, sample_ids, filepaths, patches, writer, failures,
    batch_size, num_workers, force_square, alpha, skip_failures, report,
):
    batch = int(batch_size or 32)
    options = {
        "force_square": force_square,
        "alpha": alpha or 0.0,  # pad_relative also clips the boxes to the image
        "handle_missing": "skip",
        "batch_size": batch,
        "skip_failures": True,
        "progress": False,
    }
    if num_workers is not None:
        options["num_workers"] = int(num_workers)
    total, done = len(refs), 0
    for chunk in plan_chunks([len(p) for p in patches], max(256, 8 * batch)):
        chunk_refs = [refs[i] for s in chunk for i, _ in patches[s]]
        view = dataset.select([sample_ids[s] for s in chunk], ordered=True).select_labels(
            ids=[lid for _, lid in chunk_refs], fields=patches_field
        )
        embs = view.compute_patch_embeddings(model, patches_field, **options)  # {sample id: (n, d)}
        order = view.values(f"{patches_field}.detections.id")
        errors = {}
        for s, lids in zip(chunk, order):
            e = embs.get(sample_ids[s])
            if e is None or len(e) != len(lids):
                errors[s] = models.read_error(filepaths[s]) or f"zoo model '{name}' failed on this image"
            else:
                writer.write([sample_ids[s]] * len(lids), lids, list(e))
        _fail(failures, writer, refs, sample_ids, patches, errors, skip_failures)
        done += len(chunk_refs)
        report(done / total, f"{done}/{total} patches")
    return {"device": str(getattr(model, "device", None)), "batch_size": batch, "num_workers": num_workers}
