"""Embedding models and what image and patch embeddings share.

Model names (the registered backbones of :mod:`clustering.features.backbones` and any
``zoo:<name>`` FiftyOne zoo model with embeddings), their descriptions and
validation, loading zoo models, and the bookkeeping both
:mod:`clustering.features.embeddings` and :mod:`clustering.features.patches` do on the field they
write: its name, the model recorded in its ``info`` (to refuse mixing models in
one field) and why an image could not be read.
"""

import logging

from . import backbones as bb

logger = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
DEFAULT_MODEL = bb.DEFAULT_MODEL
MAX_REPORTED_FAILURES = 20

#: zoo models offered in model lists (any zoo model with embeddings is accepted)
SUGGESTED_ZOO_MODELS = (
    "clip-vit-base32-torch",
    "dinov2-vits14-torch",
    "dinov2-vitb14-torch",
    "siglip-base-patch16-224-torch",
    "resnet50-imagenet-torch",
)

_RESERVED_FIELDS = {
    "id",
    "_id",
    "filepath",
    "tags",
    "metadata",
    "media_type",
    "created_at",
    "last_modified_at",
    "frames",
    "dataset_id",
}


def available_models(include_zoo=True):
    """Model names accepted by :func:`compute_embeddings`, the offline default
    first: the registered backbones, then suggested ``zoo:`` models."""
    names = bb.available_models()
    if include_zoo:
        names += [ZOO_PREFIX + n for n in SUGGESTED_ZOO_MODELS]
    return names


def model_description(model):
    """One line describing ``model`` (dimension and preprocessing) for forms."""
    if model.startswith(ZOO_PREFIX):
        return (
            f"FiftyOne zoo model '{model[len(ZOO_PREFIX):]}' with its own "
            "preprocessing; weights are downloaded on first use"
        )
    info = bb.model_info(model)
    where = "offline" if info["offline"] else f"weights {info['weights_file']}, downloaded on first use"
    return f"{info['dim']}-d; {info['description']}; {info['preprocessing']} ({where})"


def default_embeddings_field(model):
    """A field name derived from the model, e.g. ``efficientnet_lite0_embeddings``."""
    name = model[len(ZOO_PREFIX):] if model.startswith(ZOO_PREFIX) else model
    name = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    while "__" in name:
        name = name.replace("__", "_")
    if not name or not name[0].isalpha():
        name = "m_" + name
    return f"{name}_embeddings"


def _zoo_names():
    import fiftyone.zoo as foz

    return set(foz.list_zoo_models())


def validate_model(model):
    """Returns ``("builtin", name)`` or ``("zoo", zoo_name)``; ``ValueError``
    listing the valid names otherwise."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"Invalid model {model!r}; choose one of {', '.join(available_models())}")
    if model.startswith(ZOO_PREFIX):
        name = model[len(ZOO_PREFIX):]
        if name not in _zoo_names():
            raise ValueError(
                f"Unknown FiftyOne zoo model {name!r}; see fiftyone.zoo.list_zoo_models"
                f"(tags='embeddings'). Valid models: {', '.join(available_models())}"
            )
        return "zoo", name
    if model not in bb.available_models():
        raise ValueError(
            f"Unknown model {model!r}; valid models: {', '.join(available_models())} "
            "(or any 'zoo:<FiftyOne zoo model>')"
        )
    return "builtin", model


def validate_field_name(name, what="embeddings field", example="embeddings"):
    """``ValueError`` unless ``name`` can be a new sample field (``what`` and
    ``example`` word the message)."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        raise ValueError(
            f"Invalid {what} {name!r}: use a Python identifier such as "
            f"'{example}' (letters, digits, underscores; not starting with a digit or '_')"
        )
    if name in _RESERVED_FIELDS:
        raise ValueError(f"'{name}' is a reserved FiftyOne field; choose another name")


def type_name(ftype):
    doc = getattr(ftype, "document_type", None)
    name = type(ftype).__name__
    return f"{name}({doc.__name__})" if doc is not None else name


def field_model(dataset, field):
    try:
        info = dataset.get_field(field).info or {}
    except Exception:
        return None
    return info.get("model")


def stamp_field(dataset, field, model, dim):
    """Records the model in the vector field's ``info`` (used to refuse mixing
    the embeddings of different models in one field)."""
    try:
        f = dataset.get_field(field)
        info = dict(f.info or {})
        info.update({"model": model, "dim": int(dim) if dim else None, "created_by": "@imgclust/clustering"})
        f.info = info
        f.save()
    except Exception as e:  # metadata only
        logger.debug("Could not record model info on field '%s': %s", field, e)


def read_error(filepath):
    """Why FiftyOne cannot read ``filepath`` (None if it can)."""
    import fiftyone.utils.image as foui

    try:
        foui.read(filepath)
    except Exception as e:
        return bb._describe(e)
    return None


def load_zoo_model(name, device):
    import fiftyone.zoo as foz

    kwargs = {} if device in (None, "auto") else {"device": str(device)}
    try:
        model = foz.load_zoo_model(name, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"Could not load FiftyOne zoo model '{name}' ({type(e).__name__}: {e}). Zoo "
            "models are downloaded on first use; without network, use the offline "
            f"model '{DEFAULT_MODEL}'"
        ) from e
    if not getattr(model, "has_embeddings", False):
        raise ValueError(f"Zoo model '{name}' does not expose embeddings")
    return model
