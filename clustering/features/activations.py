"""Feature maps: what a backbone's layers compute for an image (no App code).

:func:`feature_maps` runs one image through a registered backbone
(:mod:`clustering.features.backbones`) and returns the activations of chosen layers, as
the source documents 000/001 do before clustering: they hook VGG16's
``.features`` at layers 1, 2, 3, 8, 15, 22 and 29, and plot 8 channels of
each, standardized (:func:`normalize_channel`) in the viridis colormap
(:func:`layer_strip`). :func:`compute_feature_heatmaps` stores one layer's mean
activation per sample as a FiftyOne ``Heatmap``, which the App overlays on the
image.

Where this differs from the documents, on purpose:

* The preprocessing is the plugin's embeddings' (:func:`~clustering.features.backbones.load_image`:
  the whole image resized to ``image_size`` x ``image_size`` with antialiased
  bilinear, no crop, then the model's normalization), not the documents' resize
  256 + center crop 224, so the maps are those of the features that were
  clustered. At 224 px VGG16's layer 29 (the last ReLU) is 512x14x14; layer
  30, the last max-pool (the input of the embeddings' average pooling), is
  512x7x7.
* Each hooked output is copied. VGG16's ReLUs work in place, so in the
  documents' code layer 2 (a convolution) shows layer 3's ReLU output; here it
  shows the convolution's own, signed output.
* The network is the registry's factory (:class:`~clustering.features.backbones.ModelSpec`)
  in float32, unfused: the embeddings pipeline's fused CPU graph replaces the
  modules that hooks attach to. The maps are those of hooks on the torchvision
  module itself (EfficientNet-Lite0: with BatchNorm folded into the
  convolutions, equal up to float rounding). Each network is built once per
  process and kept.
"""

import functools
import io
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import backbones as bb

logger = logging.getLogger(__name__)

#: VGG16 ``.features`` layers hooked by the source documents
DOCUMENTS_LAYERS = tuple(f"features.{i}" for i in (1, 2, 3, 8, 15, 22, 29))
#: the model whose layers the source documents show
DOCUMENTS_MODEL = "vgg16"
#: channel orders: most activated first (mean activation), or the first ones
ORDERS = ("activation", "index")
DEFAULT_CHANNELS = 8
MAX_REPORTED_FAILURES = 20
#: heatmaps written to the database at once
WRITE_EVERY = 64


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How users name a backbone's layers: ``roots`` maps a module path of the
    torchvision (or EfficientNet-Lite) network to its path in the registry
    factory's trunk; ``default`` are the layers ``layers=None`` taps."""

    roots: tuple
    default: tuple = ()


_RESNET = _Layout(
    tuple((name, str(i)) for i, name in enumerate(
        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    )),
    ("relu", "layer1", "layer2", "layer3", "layer4"),
)


def _lite_layout(stage_ends):
    """An EfficientNet-Lite's layers; ``default``: the last block of each stage."""
    return _Layout(
        (("_conv_stem", "net._conv_stem"), ("_blocks", "net._blocks"), ("_conv_head", "net._conv_head")),
        tuple(f"_blocks.{i}" for i in stage_ends) + ("_conv_head",),
    )


#: built-in backbones; ``default``: the documents' layers for VGG16, the end of
#: each stage for the others
_LAYOUTS = {
    "vgg16": _Layout((("features", "0"),), DOCUMENTS_LAYERS),
    "resnet50": _RESNET,
    "resnet18": _RESNET,
    "efficientnet_b0": _Layout((("features", "0"),), tuple(f"features.{i}" for i in range(1, 9))),
    "efficientnet-lite0": _lite_layout((0, 2, 4, 7, 10, 14, 15)),
    "efficientnet-lite1": _lite_layout((0, 3, 6, 10, 14, 19, 20)),
    "efficientnet-lite2": _lite_layout((0, 3, 6, 10, 14, 19, 20)),
    "vit_b_16": _Layout(
        (("conv_proj", "vit.conv_proj"), ("encoder.layers", "vit.encoder.layers")),
        ("conv_proj",) + tuple(f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)),
    ),
}
#: registered (custom) models: layers are named by their path in the factory's module
_CUSTOM = _Layout((("", ""),))


def _layout(spec):
    return _LAYOUTS.get(spec.name, _CUSTOM) if spec.weights != "custom" else _CUSTOM


def _trunk_path(layout, name):
    """The trunk path of the layer users call ``name`` (None if outside the roots)."""
    for root, path in layout.roots:
        if not root:
            return name
        if name == root or name.startswith(root + "."):
            return path + name[len(root):]
    return None


class _Network:
    """A registered backbone's trunk in float32 eval mode, unfused, with its
    modules by trunk path. Forward passes hold a lock: hooks live for one call."""

    def __init__(self, spec):
        built = spec.factory()
        trunk = built[0] if isinstance(built, tuple) else built
        self.spec = spec
        self.layout = _layout(spec)
        self.trunk = trunk.float().eval()
        self.modules = dict(self.trunk.named_modules())
        self.mean, self.inv_std = spec.normalization()
        self.lock = threading.Lock()

    def layer_names(self):
        """The layers users can name: each root, and the blocks of roots that
        are sequences (VGG16: ``features``, ``features.0`` ... ``features.30``)."""
        names = []
        for root, path in self.layout.roots:
            module = self.modules[path]
            if root and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                names.append(root)
            if isinstance(module, (nn.Sequential, nn.ModuleList)):
                names += [f"{root}.{child}" if root else child for child, _ in module.named_children()]
        return names

    def resolve(self, layers):
        """``[(name, trunk path), ...]`` of ``layers`` (None: the defaults)."""
        if layers is None:
            layers = self.layout.default
            if not layers:
                raise ValueError(
                    f"Model '{self.spec.name}' has no default layers; pass layers=[...] among: "
                    f"{', '.join(self.layer_names())}"
                )
        elif isinstance(layers, str):
            layers = [layers]
        resolved = []
        for name in dict.fromkeys(layers):
            path = _trunk_path(self.layout, name) if isinstance(name, str) else None
            if path not in self.modules or not name:
                raise ValueError(
                    f"Model '{self.spec.name}' has no layer {name!r}; layers: {', '.join(self.layer_names())}"
                )
            resolved.append((name, path))
        if not resolved:
            raise ValueError("layers is empty; pass None for the model's default layers")
        return resolved

    def run(self, images, paths):
        """uint8 ``(B, 3, S, S)`` -> ``{trunk path: float32 output}``: a copy of
        each module's output (of its last call, for a module called twice)."""
        outputs = {}

        def keep(path):
            def hook(module, inputs, output):
                outputs[path] = output.detach().clone() if torch.is_tensor(output) else output

            return hook

        x = (images.float() - self.mean) * self.inv_std  # as Backbone._normalize
        with self.lock:
            handles = [self.modules[path].register_forward_hook(keep(path)) for path in paths]
            try:
                with torch.inference_mode():
                    self.trunk(x)
            finally:
                for handle in handles:
                    handle.remove()
        return {path: _as_maps(outputs.get(path), path) for path in paths}


def _as_maps(output, path):
    """A hooked output as ``(B, C, H, W)``: convolutional maps as they are,
    transformer tokens ``(B, 1 + H*W, C)`` as a grid (class token dropped)."""
    if torch.is_tensor(output) and output.ndim == 4:
        return output
    if torch.is_tensor(output) and output.ndim == 3:
        side = int(round((output.shape[1] - 1) ** 0.5))
        if side * side == output.shape[1] - 1:
            return output[:, 1:].transpose(1, 2).reshape(output.shape[0], -1, side, side)
    what = "no output (it is not called)" if output is None else (
        f"shape {tuple(output.shape)}" if torch.is_tensor(output) else type(output).__name__
    )
    raise ValueError(f"Layer '{path}' gives {what}, not feature maps")


_NETWORKS = {}
_NETWORKS_LOCK = threading.Lock()


def _network(model):
    """The :class:`_Network` of ``model``, built once per process (again if the
    model is registered anew). Raises ``WeightsUnavailableError`` where the
    weights are neither cached nor downloadable."""
    spec = bb.get_spec(model)
    with _NETWORKS_LOCK:
        network = _NETWORKS.get(spec.name)
        if network is None or network.spec is not spec:
            network = _NETWORKS[spec.name] = _Network(spec)
    return network


def available_layers(model=DOCUMENTS_MODEL):
    """The names :func:`feature_maps` accepts for ``model`` (loads it)."""
    return _network(model).layer_names()


def default_layers(model=DOCUMENTS_MODEL):
    """The layers ``layers=None`` taps (empty for registered models, which
    need explicit layers). Loads nothing."""
    return list(_layout(bb.get_spec(model)).default)


def weights_available(model):
    """Whether ``model`` loads without network (bundled, cached or registered weights)."""
    return bool(bb.model_info(model)["offline"])


def default_model():
    """The documents' VGG16 where its weights are cached, else the offline default."""
    return DOCUMENTS_MODEL if weights_available(DOCUMENTS_MODEL) else bb.DEFAULT_MODEL


# --------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------


@dataclass
class LayerMaps:
    """The activations of one layer for one image.

    Attributes:
        name: the layer, e.g. ``"features.29"``
        module: its class, e.g. ``"ReLU"``
        shape: the full activation ``(channels, height, width)``
        channels: the indices of the channels in ``maps``
        maps: float32 ``(len(channels), height, width)``
        mean_map: float32 ``(height, width)``: the mean over all channels
    """

    name: str
    module: str
    shape: tuple
    channels: list
    maps: np.ndarray
    mean_map: np.ndarray


def preprocess(image, model=DOCUMENTS_MODEL):
    """``image`` as the model's embeddings see it before normalization: a
    ``(3, S, S)`` uint8 tensor (the whole image resized, no crop). ``image``:
    a file path, a PIL image or a FiftyOne sample (its ``filepath``)."""
    size = bb.get_spec(model).image_size
    filepath = getattr(image, "filepath", None)  # a FiftyOne sample
    if filepath is not None:
        image = filepath
    if isinstance(image, (str, os.PathLike)):
        return bb.load_image(os.fspath(image), size)
    from PIL import Image

    if isinstance(image, Image.Image):
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)
        return bb.fit_image(torch.from_numpy(rgb).permute(2, 0, 1), size)
    raise TypeError(f"image must be a file path, a PIL image or a FiftyOne sample; got {type(image).__name__}")


def _check_selection(channels, order):
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1; got {channels!r}")
    if order not in ORDERS:
        raise ValueError(f"Unknown order {order!r}; choose one of {', '.join(ORDERS)}")


def _layer_maps(name, module, activation, channels, order):
    """One image's ``(C, H, W)`` activation -> :class:`LayerMaps`."""
    k = min(int(channels), activation.shape[0])
    if order == "index":
        picked = torch.arange(k)
    else:
        means = activation.mean(dim=(1, 2))
        picked = torch.sort(means, descending=True, stable=True).indices[:k]
    return LayerMaps(
        name=name,
        module=type(module).__name__,
        shape=tuple(activation.shape),
        channels=picked.tolist(),
        maps=activation[picked].numpy().astype(np.float32, copy=False),
        mean_map=activation.mean(dim=0).numpy().astype(np.float32, copy=False),
    )


def feature_maps(image, model=DOCUMENTS_MODEL, layers=None, channels=DEFAULT_CHANNELS, order="activation"):
    """The feature maps of ``image`` at ``layers`` of ``model``: one forward pass.

    Args:
        image: a file path, a PIL image or a FiftyOne sample
        model ("vgg16"): a registered backbone (:func:`clustering.available_models`)
        layers (None): layer names such as ``"features.29"`` (see
            :func:`available_layers`); None: the documents' layers for VGG16
            (``features`` 1, 2, 3, 8, 15, 22, 29), the end of each stage for
            the other built-in backbones (:func:`default_layers`)
        channels (8): how many channels to return per layer
        order ("activation"): ``"activation"``: the channels with the highest
            mean activation, most activated first; ``"index"``: the first ones,
            as in the documents

    Returns:
        a list of :class:`LayerMaps`, in the order of ``layers``

    Raises:
        WeightsUnavailableError: the model's weights are neither cached nor
            downloadable (the offline ``efficientnet-lite0`` always loads)
    """
    _check_selection(channels, order)
    network = _network(model)
    resolved = network.resolve(layers)
    images = preprocess(image, model)[None]
    outputs = network.run(images, [path for _, path in resolved])
    return [
        _layer_maps(name, network.modules[path], outputs[path][0], channels, order)
        for name, path in resolved
    ]


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------


def normalize_channel(arr):
    """The documents' display scaling of one channel: standardized (mean 0,
    std 1), then ``x * 64 + 128``, clipped to 0..255, as uint8 (truncated)."""
    arr = np.asarray(arr, dtype=np.float32)
    arr = (arr - arr.mean()) / (arr.std() + 1e-5)
    return np.clip(arr * 64 + 128, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _viridis():
    import matplotlib  # a FiftyOne dependency

    return (matplotlib.colormaps["viridis"](np.arange(256))[:, :3] * 255).round().astype(np.uint8)


def colorize(gray):
    """uint8 ``(H, W)`` -> viridis RGB ``(H, W, 3)``: 0 is dark purple, 255
    yellow (after :func:`normalize_channel`, 128 is the channel's mean and
    +-2 std the colormap's ends; the documents' ``imshow`` also stretched each
    tile to its own min..max)."""
    return _viridis()[np.asarray(gray, dtype=np.uint8)]


def channel_image(fmap, height):
    """One channel as a viridis RGB image ``height`` pixels high: normalized
    at its resolution, then enlarged by pixel repetition or reduced by area."""
    from PIL import Image

    gray = Image.fromarray(normalize_channel(fmap))
    width = max(1, round(height * gray.width / gray.height))
    resample = Image.Resampling.NEAREST if height >= gray.height else Image.Resampling.BOX
    return colorize(np.asarray(gray.resize((width, height), resample)))


def layer_strip(layer, tile=112, gap=4, background=(32, 32, 32)):
    """A :class:`LayerMaps`' channels side by side, as one PIL RGB image."""
    from PIL import Image

    tiles = [channel_image(fmap, tile) for fmap in layer.maps]
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    strip = np.empty((tile, width, 3), dtype=np.uint8)
    strip[:] = background
    x = 0
    for t in tiles:
        strip[:, x : x + t.shape[1]] = t
        x += t.shape[1] + gap
    return Image.fromarray(strip)


def png_data_url(image):
    """A PIL image as a ``data:image/png;base64,...`` URL."""
    import base64

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def describe(layer):
    """One line about a :class:`LayerMaps`, e.g. ``features.1 · ReLU · 64×224×224``."""
    return f"{layer.name} · {layer.module} · {'×'.join(str(d) for d in layer.shape)}"


# --------------------------------------------------------------------------
# Heatmaps
# --------------------------------------------------------------------------


def heatmap(mean_map):
    """A ``fo.Heatmap`` of a layer's mean activation at its own resolution;
    its ``range`` is the map's min..max, and the App stretches it over the
    whole image (which the network saw resized, uncropped)."""
    import fiftyone as fo

    mean_map = np.asarray(mean_map, dtype=np.float32)
    lo, hi = float(mean_map.min()), float(mean_map.max())
    return fo.Heatmap(map=mean_map, range=[lo, hi if hi > lo else lo + 1.0])


def default_heatmap_field(model, layer):
    """E.g. ``vgg16_features_29_heatmap``."""
    name = "".join(c if c.isalnum() else "_" for c in f"{model}_{layer}".lower())
    return "_".join(part for part in name.split("_") if part) + "_heatmap"


def validate_heatmap_field(dataset, field, model, layer, samples):
    """``ValueError`` if ``field`` is not a valid name, exists as something
    other than a Heatmap, or holds another layer's heatmaps on samples outside
    ``samples``. Returns whether it exists."""
    import fiftyone as fo

    from .models import validate_field_name

    validate_field_name(field, what="heatmap field", example="vgg16_heatmap")
    ftype = dataset.get_field_schema(flat=True).get(field)
    if ftype is None:
        return False
    if not (isinstance(ftype, fo.EmbeddedDocumentField) and issubclass(ftype.document_type, fo.Heatmap)):
        raise ValueError(f"Field '{field}' exists and is not a Heatmap field; choose another name")
    info = ftype.info or {}
    previous = (info.get("model"), info.get("layer"))
    if previous != (model, layer):
        untouched = dataset.exists(field).count() - samples.exists(field).count()
        if untouched:
            raise ValueError(
                f"Field '{field}' holds heatmaps of {previous[0]} '{previous[1]}' on {untouched} "
                f"samples outside this computation; choose another field"
            )
    return True


def compute_feature_heatmaps(samples, field=None, model=DOCUMENTS_MODEL, layer=None, batch_size=8, progress=None):
    """Stores, for each sample of ``samples``, the mean activation (over its
    channels) of one layer as a ``fo.Heatmap`` in ``field``, at the layer's
    resolution, so the App overlays it on the image.

    Writes only ``field``, only on the samples of ``samples`` (by sample id on
    the root dataset: a view's other stages never affect what is saved).
    Samples whose image cannot be read get no heatmap (``None``).

    Args:
        samples: a FiftyOne image dataset or view
        field (None): the Heatmap field; default: :func:`default_heatmap_field`
        model ("vgg16"): a registered backbone
        layer (None): a layer name (:func:`available_layers`); default: the
            last of :func:`default_layers`
        batch_size (8): images per forward pass
        progress (None): None or True (a progress bar), False, or a callable
            ``progress(fraction, message)``

    Returns:
        a summary dict: ``model``, ``layer``, ``field``, ``shape`` (the
        layer's activation), ``num_samples``, ``num_written``, ``num_failed``,
        ``errors`` (first 20, by sample id), ``seconds``
    """
    import fiftyone as fo
    import fiftyone.core.media as fom

    from ..progress import progress_or_bar
    from ..runs.storage import write_fields

    t0 = time.perf_counter()
    if samples.media_type != fom.IMAGE:
        raise ValueError(f"Heatmaps need an image collection; this one has media type '{samples.media_type}'")
    if samples._is_generated or samples._is_dynamic_groups:
        raise ValueError("Patches, frames, clips and dynamic-group views are not supported: use the images' view")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError("batch_size must be >= 1")
    if layer is None:
        defaults = default_layers(model)
        if not defaults:
            raise ValueError(f"Model '{model}' has no default layers; pass layer=")
        layer = defaults[-1]
    field = field or default_heatmap_field(model, layer)
    dataset = samples._root_dataset
    exists = validate_heatmap_field(dataset, field, model, layer, samples)
    network = _network(model)  # missing weights fail before the schema changes
    ((_, path),) = network.resolve([layer])
    ids, filepaths = samples.values(["id", "filepath"])
    if not exists:
        dataset.add_sample_field(
            field,
            fo.EmbeddedDocumentField,
            embedded_doc_type=fo.Heatmap,
            description=f"Mean activation of {model} '{layer}' (@imgclust/clustering)",
            info={"model": model, "layer": layer, "created_by": "@imgclust/clustering"},
        )
    else:
        ftype = dataset.get_field(field)
        ftype.info = {**(ftype.info or {}), "model": model, "layer": layer}
        ftype.save()

    files = bb.ImageFiles(filepaths, network.spec.image_size)
    written, failures, shape, pending = 0, {}, None, {}
    with progress_or_bar(progress, f"Heatmaps ({model} {layer})") as report:
        for start in range(0, len(ids), int(batch_size)):
            stop = min(start + int(batch_size), len(ids))
            indices, images, errors = bb.collate_images([files[i] for i in range(start, stop)])
            pending.update({ids[i]: None for i in errors})  # no stale heatmap of an unreadable image
            failures.update({ids[i]: message for i, message in errors.items()})
            if len(indices):
                maps = network.run(images, [path])[path]
                shape = list(maps.shape[1:])
                means = maps.mean(dim=1).numpy()
                pending.update({ids[i]: heatmap(m) for i, m in zip(indices.tolist(), means)})
                written += len(indices)
            if len(pending) >= WRITE_EVERY or stop == len(ids):
                write_fields(dataset, {field: pending})
                pending = {}
            report(stop / len(ids), f"{stop}/{len(ids)} images")
    if failures:
        logger.warning("%d images could not be read, e.g. %s", len(failures), next(iter(failures.values())))
    reported = list(failures)[:MAX_REPORTED_FAILURES]
    return {
        "model": model,
        "layer": layer,
        "field": field,
        "shape": shape,
        "num_samples": len(ids),
        "num_written": written,
        "num_failed": len(failures),
        "errors": {i: failures[i] for i in reported},
        "seconds": round(time.perf_counter() - t0, 3),
    }
