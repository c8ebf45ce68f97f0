"""CPU inference graphs: each convolution fused with its activation and
residual add into one oneDNN primitive.

On CPU, a CNN backbone spends as much time in the elementwise passes after its
convolutions (ReLU/ReLU6 clamps, residual adds, the zero padding of TF-style
"SAME" convolutions) as in the convolutions themselves: each is one more trip
through memory. :func:`fuse_convolutions` traces a module with ``torch.fx``
(convolutions as leaves), and rewrites

* ``conv -> relu | relu6 | hardtanh | silu`` and
* ``conv -> add(other) [-> relu]``

into single ``torch.ops.mkldnn._convolution_pointwise`` calls (the kernels
Inductor emits for the same patterns), with weights stored once in the target
dtype (float32, or bfloat16 on CPUs with AMX/AVX512-BF16 units) and
channels-last layout. Asymmetric "SAME" padding ``(p, p + 1)`` becomes a
symmetric padding ``p + 1`` with a kernel one zero row/column larger in front,
which computes exactly the same outputs without the padding copy.

Results equal the unfused float32 module to float32 rounding; with bfloat16
weights they match to bfloat16 precision (cosine similarity about 0.997).
:func:`fuse_checked` (what the backbones use) also runs the fused graph on a
test batch and keeps it only if it agrees with the module there, so a custom
model the pass cannot trace, or gets wrong, runs unfused instead.
"""

import logging
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["FusedConv2d", "fuse_convolutions", "fuse_checked", "fusion_available"]

logger = logging.getLogger(__name__)

#: largest relative L2 error of a fused graph's output (per row) against the
#: float32 module it replaces: float32 rounding, and bfloat16 through ~50
#: layers (EfficientNet-Lite0 on noise: about 0.08)
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.2}


def fusion_available():
    """Whether this torch build has oneDNN's fused convolution kernels."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


# unary post-ops: module types and functions -> (oneDNN attr, scalars)
_UNARY_MODULES = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0]), nn.SiLU: ("swish", [])}
_UNARY_FUNCTIONS = {
    F.relu: ("relu", []),
    torch.relu: ("relu", []),
    torch.relu_: ("relu", []),
    F.relu6: ("hardtanh", [0.0, 6.0]),
    F.silu: ("swish", []),
}
_UNARY_METHODS = {"relu": ("relu", []), "relu_": ("relu", [])}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


class FusedConv2d(nn.Module):
    """A 2-D convolution with an optional residual add and activation, run as
    one oneDNN primitive: ``act(conv(x) [+ other])``."""

    def __init__(self, conv, unary=None, add=False, dtype=torch.float32):
        super().__init__()
        weight = conv.weight.detach().float()
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[0])
        padding = list(conv.padding)
        static = getattr(conv, "static_padding", None)  # efficientnet-pytorch "SAME" convs
        self.pre_pad = None
        if isinstance(static, nn.ZeroPad2d):
            left, right, top, bottom = static.padding
            symmetric = left == right and top == bottom
            shifted = right == left + 1 and bottom == top + 1 and tuple(conv.dilation) == (1, 1)
            if symmetric:
                padding = [padding[0] + top, padding[1] + left]
            elif shifted and padding == [0, 0]:
                # (p, p+1) padding == symmetric p+1 with one zero row/column
                # in front of the kernel
                weight = F.pad(weight, (1, 0, 1, 0))
                padding = [bottom, right]
            else:
                self.pre_pad = static
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.to(dtype))
        self.padding = padding
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.unary, self.scalars = unary if unary is not None else ("none", [])
        self.add = add

    def forward(self, x, other=None):
        if self.pre_pad is not None:
            x = self.pre_pad(x)
        x = x.to(self.weight.dtype).contiguous(memory_format=torch.channels_last)
        args = (self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
        if self.add:
            other = other.to(self.weight.dtype).contiguous(memory_format=torch.channels_last)
            unary = None if self.unary == "none" else self.unary
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, *args, "add", 1.0, unary, self.scalars, None
            )
        return torch.ops.mkldnn._convolution_pointwise(x, *args, self.unary, self.scalars, "")


class _ConvLeafTracer(fx.Tracer):
    """Traces through custom modules but keeps every Conv2d (and subclasses
    such as efficientnet-pytorch's static-padding convs) as one call."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


def _unary(node, modules):
    """The oneDNN post-op of ``node`` if it is a supported activation."""
    if node.op == "call_module":
        module = modules.get(node.target)  # None for calls this pass inserted
        if type(module) in _UNARY_MODULES:
            return _UNARY_MODULES[type(module)]
        if type(module) is nn.Hardtanh:
            return ("hardtanh", [float(module.min_val), float(module.max_val)])
    elif node.op == "call_function" and node.target in _UNARY_FUNCTIONS:
        return _UNARY_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in _UNARY_METHODS:
        return _UNARY_METHODS[node.target]
    return None


def _only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _add_operand(add, conv_node):
    """For ``add(conv_node, other)`` (either order, no ``alpha``), ``other``."""
    is_add = (add.op == "call_function" and add.target in _ADD_FUNCTIONS) or (
        add.op == "call_method" and add.target == "add"
    )
    if not is_add or len(add.args) != 2 or add.kwargs:
        return None
    a, b = add.args
    other = b if a is conv_node else a if b is conv_node else None
    return other if isinstance(other, fx.Node) and other is not conv_node else None


def fuse_convolutions(module, dtype=torch.float32):
    """Returns ``module`` traced with every ``Conv2d`` (BatchNorm already
    folded) replaced by a :class:`FusedConv2d` that also performs its
    activation and residual add; raises if the module cannot be traced."""
    module = module.eval()
    graph = _ConvLeafTracer().trace(module)
    root = fx.GraphModule(module, graph)
    modules = dict(root.named_modules())
    for node in list(root.graph.nodes):  # folded BatchNorms, eval-mode dropout
        if node.op == "call_module" and (
            isinstance(modules[node.target], nn.Dropout) or _is_identity(modules[node.target])
        ):
            if len(node.args) == 1 and not node.kwargs:
                node.replace_all_uses_with(node.args[0])
                root.graph.erase_node(node)
    count = 0
    for node in list(root.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        conv = modules[node.target]
        if len(node.args) != 1 or node.kwargs or not _fusable(conv):
            continue
        chain, other, unary = [node], None, None  # the nodes the fused call replaces
        user = _only_user(node)
        if user is not None and _unary(user, modules) is not None:
            chain.append(user)
            unary = _unary(user, modules)
        elif user is not None and _add_operand(user, node) is not None:
            chain.append(user)
            other = _add_operand(user, node)
            after = _only_user(user)
            if after is not None and _unary(after, modules) == ("relu", []):
                chain.append(after)
                unary = ("relu", [])
        last = chain[-1]
        name = f"fused_conv_{count}"
        count += 1
        root.add_submodule(name, FusedConv2d(conv, unary=unary, add=other is not None, dtype=dtype))
        with root.graph.inserting_after(last):
            args = (node.args[0],) if other is None else (node.args[0], other)
            fused = root.graph.call_module(name, args)
        last.replace_all_uses_with(fused)
        for dead in reversed(chain):
            root.graph.erase_node(dead)
    root.graph.eliminate_dead_code()
    root.delete_all_unused_submodules()
    root.recompile()
    return root


def fuse_checked(module, dtype, example):
    """:func:`fuse_convolutions` of ``module`` if the result runs on
    ``example`` (a normalized channels-last float32 batch) and agrees there
    with ``module`` within :data:`TOLERANCE`; None (with a warning) otherwise:
    layers it cannot trace, a kernel this platform lacks, a pattern it got
    wrong. ``module`` itself is left unchanged."""
    try:
        fused = fuse_convolutions(module, dtype)
        with torch.inference_mode():
            ref = module(example).float().flatten(1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out = fused(example).float().flatten(1)
        error = (out - ref).norm(dim=1) / ref.norm(dim=1).clamp(min=1e-12)
        if out.shape != ref.shape or not bool((error <= TOLERANCE[dtype]).all()):
            raise ValueError(f"relative error {float(error.max()):.3g} on a test batch")
    except Exception as e:  # noqa: BLE001 - any failure: run the module unfused
        logger.warning("Running %s unfused (%s: %s)", type(module).__name__, type(e).__name__, e)
        return None
    return fused


def _fusable(conv):
    """A plain zero-padded Conv2d, or a subclass whose forward only applies
    its ``static_padding`` first (efficientnet-pytorch's "SAME" convs)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    if type(conv).forward is nn.Conv2d.forward:
        return True
    pad = getattr(conv, "static_padding", None)
    return isinstance(pad, (nn.ZeroPad2d, nn.Identity)) or _is_identity(pad)


def _is_identity(module):
    """``nn.Identity`` or a library's parameterless copy of it (efficientnet-pytorch has one)."""
    return isinstance(module, nn.Identity) or (
        type(module).__name__ == "Identity" and not list(module.parameters())
    )
