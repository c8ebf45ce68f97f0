"""CPU inference graphs (clustering.features.fusion) and backbone precisions: fused
convolutions compute what the unfused network computes, bfloat16 stays close to
float32, and "auto" picks the precision the machine runs fastest."""

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

import clustering.features.backbones as bb
from clustering.features import fusion

pytestmark = pytest.mark.skipif(not fusion.fusion_available(), reason="torch built without oneDNN")

MODEL = "efficientnet-lite0"


def _fused_convs(module):
    return [m for m in module.modules() if isinstance(m, fusion.FusedConv2d)]


def _unfused_lite0():
    """The offline model's trunk with BatchNorm folded, not yet fused."""
    features, _ = bb.get_spec(MODEL).factory()
    return features.eval().to(memory_format=torch.channels_last)


def _images(n=4, size=224, seed=0):
    """Real photos from scikit-image, resized, as a normalized float batch."""
    from skimage import data, transform

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    batch = [transform.resize(p, (size, size), anti_aliasing=True) for p in photos[:n]]
    x = torch.tensor(np.stack(batch), dtype=torch.float32).permute(0, 3, 1, 2)
    return ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)


def test_lite0_fused_float32_equals_unfused_and_replaces_every_conv():
    net = _unfused_lite0()
    x = _images()
    with torch.inference_mode():
        ref = net(x)
        fused = fusion.fuse_convolutions(copy.deepcopy(net))
        out = fused(x)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert len(_fused_convs(fused)) == n_convs == 49
    assert not any(isinstance(m, (nn.Conv2d, nn.ReLU6)) for m in fused.modules())
    # stem conv (TF "SAME" (0, 1) padding) became a symmetric one with a 4x4 kernel
    stem = _fused_convs(fused)[0]
    assert stem.pre_pad is None and tuple(stem.weight.shape[-2:]) == (4, 4) and stem.padding == [1, 1]
    assert stem.unary == "hardtanh" and stem.scalars == [0.0, 6.0]
    # residual blocks: project conv + add in one call
    assert sum(m.add for m in _fused_convs(fused)) == 9
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize(
    "left,right,stride,kernel",
    [(0, 1, 2, 3), (1, 2, 2, 5), (1, 1, 1, 3), (2, 2, 1, 5), (0, 2, 2, 3)],
)
def test_static_same_padding_variants_match_explicit_padding(left, right, stride, kernel):
    """Asymmetric (p, p+1) padding is folded into the kernel, symmetric into the
    conv, anything else is padded explicitly: all give the padded conv's output."""

    class StaticSameConv(nn.Conv2d):  # the shape of efficientnet-pytorch's convs
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.static_padding = nn.ZeroPad2d((left, right, left, right))

        def forward(self, x):
            return super().forward(self.static_padding(x))

    torch.manual_seed(0)
    conv = StaticSameConv(8, 16, kernel, stride=stride).eval()
    net = nn.Sequential(conv, nn.ReLU6()).eval()
    x = torch.randn(2, 8, 30, 30).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = net(x)
        fused = fusion.fuse_convolutions(copy.deepcopy(net))
        out = fused(x)
    (f,) = _fused_convs(fused)
    assert (f.pre_pad is None) == (right - left in (0, 1))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_resnet_residual_add_and_relu_fuse_into_the_last_conv_of_each_block():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    trunk = bb._fuse_bn(nn.Sequential(*list(net.children())[:-1], nn.Flatten(1)))
    trunk = trunk.to(memory_format=torch.channels_last)
    x = _images(2, 96)
    with torch.inference_mode():
        ref = trunk(x)
        fused = fusion.fuse_convolutions(copy.deepcopy(trunk))
        out = fused(x)
    convs = _fused_convs(fused)
    assert len(convs) == 20  # 17 + 3 downsample convs
    residual = [m for m in convs if m.add]
    assert len(residual) == 8 and all(m.unary == "relu" for m in residual)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


needs_bf16_convolutions = pytest.mark.skipif(
    not bb.cpu_supports_bf16_convolutions(),
    reason="oneDNN has no bf16 convolutions here (the CPU has neither AVX-512 BW/VL/DQ nor "
    "AVX-NE-CONVERT, or ONEDNN_MAX_CPU_ISA rules them out)",
)


@needs_bf16_convolutions
def test_bfloat16_stays_close_to_float32_on_real_photos():
    net = _unfused_lite0()
    x = _images()
    with torch.inference_mode():
        ref = net(x)
        bf16 = fusion.fuse_convolutions(copy.deepcopy(net), torch.bfloat16)
        out = bf16(x).float()
    assert all(m.weight.dtype == torch.bfloat16 for m in _fused_convs(bf16))
    cos = torch.nn.functional.cosine_similarity(out, ref)
    assert float(cos.min()) > 0.99, cos


def test_resolve_precision(monkeypatch):
    auto = bb.resolve_precision("cpu", "auto")
    assert auto == ("bf16" if bb.cpu_has_bf16_units() and bb.cpu_supports_bf16_convolutions() else "fp32")
    # a CPU without bf16 convolutions (AVX2 only) gets fp32, bf16 units or not
    monkeypatch.setattr(bb, "cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(bb, "_onednn_bf16_check", lambda: False)
    assert bb.resolve_precision("cpu", "auto") == "fp32"
    monkeypatch.setattr(bb, "_onednn_bf16_check", lambda: True)
    assert bb.resolve_precision("cpu", "auto") == "bf16"
    # a torch without the check: decided from the CPU's flags
    monkeypatch.setattr(bb, "_onednn_bf16_check", lambda: None)
    monkeypatch.setattr(bb, "_cpu_flags", lambda: {"avx2", "fma", "avx512_bf16"})
    assert bb.resolve_precision("cpu", "auto") == "fp32"
    monkeypatch.setattr(bb, "_cpu_flags", lambda: {"avx2", "avx512bw", "avx512vl", "avx512dq"})
    assert bb.resolve_precision("cpu", "auto") == "bf16"
    monkeypatch.undo()
    assert bb.resolve_precision("cpu", "fp32") == "fp32"
    assert bb.resolve_precision("cpu", "bf16") == "bf16"
    with pytest.raises(ValueError, match="fp16.*GPUs"):
        bb.resolve_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="Unknown precision 'half'.*auto, fp32, bf16, fp16"):
        bb.resolve_precision("cpu", "half")


def test_cpu_has_bf16_units_agrees_with_the_cpu_flags():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    assert bb.cpu_has_bf16_units() == ("amx_tile" in flags or "avx512_bf16" in flags)
    from_flags = {"avx512bw", "avx512vl", "avx512dq"} <= set(flags) or "avx_ne_convert" in flags
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):  # a limit below the CPU's: torch's check says no more
        assert not bb.cpu_supports_bf16_convolutions() or from_flags
    else:
        assert bb.cpu_supports_bf16_convolutions() == from_flags


def test_backbones_per_precision_embed_real_images_consistently(demo_images_dir):
    names = sorted(os.listdir(demo_images_dir))
    paths = [os.path.join(demo_images_dir, n) for n in names[:: max(1, len(names) // 12)]][:12]
    fp32 = bb.get_backbone(MODEL, "cpu", "fp32")
    bf16 = bb.get_backbone(MODEL, "cpu", "bf16")
    # without oneDNN bf16 convolutions (AVX2 only) bf16 runs unfused, under autocast
    assert fp32 is not bf16 and fp32.fused and bf16.fused == bb.cpu_supports_bf16_convolutions()
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    X32, f32 = bb.embed_files(paths, fp32, batch_size=4, num_workers=0)
    X16, f16 = bb.embed_files(paths, MODEL, batch_size=4, num_workers=2, device="cpu", precision="bf16")
    assert not f32 and not f16 and X16.dtype == np.float32
    cos = (X32 * X16).sum(1) / np.linalg.norm(X32, axis=1) / np.linalg.norm(X16, axis=1)
    # these low-resolution faces and texture crops are the hardest case seen
    # (real photos: min 0.994, mean 0.999); clusters are the same (README)
    assert cos.min() > 0.95 and cos.mean() > 0.99 and not np.array_equal(X32, X16)


class _ScaledConv(nn.Conv2d):
    """A conv whose forward does more than pad + convolve (what the fusion
    pass would get wrong if it trusted the ``static_padding`` attribute)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.Identity()

    def forward(self, x):
        return 2.0 * super().forward(self.static_padding(x))


class _DataDependent(nn.Module):
    """Control flow on values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return (y if float(y.mean()) > 0 else -y).mean(dim=(2, 3))


@pytest.mark.parametrize("factory", [
    lambda: nn.Sequential(_ScaledConv(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
    _DataDependent,
])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_models_the_fusion_cannot_handle_run_unfused_with_the_same_output(factory, precision, caplog):
    name = "test-unfusable"
    bb.register_model(name, lambda: factory().eval(), dim=4, image_size=32, overwrite=True)
    with caplog.at_level("WARNING", logger="clustering.features.fusion"):
        backbone = bb.get_backbone(name, "cpu", precision)
    assert backbone.fused is False and "unfused" in caplog.text
    reference = factory().eval()
    reference.load_state_dict(backbone.features.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        out = backbone.forward_uint8(images)
        expected = reference((images.float() - backbone._mean) * backbone._inv_std)
    tol = 0.05 if precision == "bf16" else 1e-5
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=tol, atol=tol)
