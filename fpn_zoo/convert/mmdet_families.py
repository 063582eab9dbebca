"""mmdetection 3.3 neck *modules* -> the matching fpn_zoo neck, configuration and weights.

:func:`from_mmdet_module` takes a built mmdet neck (``ChannelMapper``, ``HRFPN``, ``BFP``, ...), reads its
configuration from the module itself (channels from its convs, norm and activation from its mmcv
``ConvModule``s, counts from its layers), builds the fpn_zoo neck that computes the same function, and loads
the peer's weights under fpn_zoo's names. Dispatch is on the peer's class name (:data:`CONVERTERS`).

The state dicts must correspond exactly: every peer tensor lands on one fpn_zoo tensor of the same shape and
none is left over on either side. A peer configuration fpn_zoo does not reproduce (a custom ``conv_cfg``, a
norm or activation it has no name for, a conv bias next to a norm ...) is a ``ValueError`` naming the
attribute, never a partial load.

mmcv's ``ConvModule`` holds ``conv``, the norm under its ``norm_name`` (``bn``, ``gn``) and ``activate``;
fpn_zoo's :class:`~fpn_zoo.layers.conv.ConvNormAct` holds ``conv``, ``norm``, ``act``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from ..necks.bfp import bfp
from ..necks.centernet_neck import centernet_neck
from ..necks.channel_mapper import channel_mapper
from ..necks.csp_pafpn import csp_pafpn
from ..necks.dilated_encoder import dilated_encoder
from ..necks.fpg import fpg
from ..necks.fpn_dropblock import fpn_dropblock
from ..necks.hrfpn import hrfpn
from ..necks.ssd_neck import ssd_neck
from ..necks.ssh import ssh
from ..necks.yolov3_neck import yolov3_neck

__all__ = ["from_mmdet_module", "CONVERTERS", "conv_module_config"]

# (pattern, replacement) pairs applied to peer keys with re.subn, first match wins; then a ConvModule's
# norm, under its norm_name, becomes ``norm``.
Renames = Sequence[Tuple[str, Any]]
_NORM_RENAME = (r"\.(bn|gn)\.", ".norm.")
Converter = Callable[[nn.Module, Optional[FeatureSpec]], Tuple[nn.Module, Renames]]
CONVERTERS: Dict[str, Converter] = {}
_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "bfp": bfp, "centernet_neck": centernet_neck, "channel_mapper": channel_mapper, "csp_pafpn": csp_pafpn,
    "dilated_encoder": dilated_encoder, "fpg": fpg, "fpn_dropblock": fpn_dropblock, "hrfpn": hrfpn, "ssh": ssh,
    "ssd_neck": ssd_neck, "yolov3_neck": yolov3_neck,
}


def _converts(class_name: str) -> Callable[[Converter], Converter]:
    def decorator(fn: Converter) -> Converter:
        CONVERTERS[class_name] = fn
        return fn

    return decorator


def from_mmdet_module(peer: nn.Module, features: Any = None) -> nn.Module:
    """Build the fpn_zoo neck equivalent to an mmdet neck module and load its weights.

    The result has the peer's dtype, device and train/eval mode. Its outputs are the peer's, in the same
    order, except where a family's docstring says otherwise (``yolov3_neck`` returns finest first).

    Args:
        peer: a built mmdet 3.3 neck (see :data:`CONVERTERS`).
        features: the backbone levels the peer runs on (a timm model, ``feature_info``, ``FeatureSpec`` ...),
            for the true strides in ``feature_info``; their channels must be the peer's. Default: the peer's
            channels at strides 8, 16, 32 ... (mmdet modules do not record strides). ``SSDNeck`` records
            neither its input channels nor their number, so it needs ``features``.

    Raises:
        TypeError: ``peer`` is not an ``nn.Module``.
        ValueError: no converter for its class, or a configuration fpn_zoo does not reproduce (the message
            names the attribute).
    """
    if not isinstance(peer, nn.Module):
        raise TypeError(f"from_mmdet_module takes an mmdet neck module, got {type(peer).__name__}")
    name = type(peer).__name__
    converter = CONVERTERS.get(name)
    if converter is None:
        hint = " (FPN / PAFPN weights: fpn_zoo.convert.from_mmdet_neck)" if name in ("FPN", "PAFPN") else ""
        raise ValueError(f"no fpn_zoo converter for mmdet {name}; supported: {sorted(CONVERTERS)}{hint}")
    hint = None if features is None else FeatureSpec.resolve(features)
    neck, renames = converter(peer, hint)
    param = next(peer.parameters(), None)
    if param is not None:
        neck.to(device=param.device, dtype=param.dtype)
    _load_renamed(neck, peer.state_dict(), renames, name)
    return neck.train(peer.training)


def _load_renamed(neck: nn.Module, peer_state: Dict[str, torch.Tensor], renames: Renames, owner: str) -> None:
    mapped: Dict[str, torch.Tensor] = {}
    for key, value in peer_state.items():
        for pattern, replacement in renames:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        else:
            raise ValueError(f"mmdet {owner}: parameter {key!r} has no fpn_zoo counterpart")
        mapped[re.sub(_NORM_RENAME[0], _NORM_RENAME[1], new)] = value
    ours = neck.state_dict()
    missing, unexpected = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    if missing or unexpected:
        raise ValueError(f"mmdet {owner}: state dicts do not correspond; fpn_zoo tensors with no peer tensor "
                         f"{missing}, peer tensors with no fpn_zoo tensor {unexpected}")
    for key, value in mapped.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"mmdet {owner}: {key} is {tuple(value.shape)} in the peer, "
                             f"{tuple(ours[key].shape)} in fpn_zoo")
    neck.load_state_dict(mapped)


# ------------------------------------------------------------------------------- reading mmcv ConvModules


def _norm_config(norm: nn.Module, where: str) -> Tuple[Optional[str], Dict[str, Any]]:
    if type(norm) is nn.BatchNorm2d:
        if not (norm.affine and norm.track_running_stats):
            raise ValueError(f"{where}: a BatchNorm2d without affine weights or running stats is not supported")
        return "batchnorm", {"eps": norm.eps, "momentum": norm.momentum}
    if isinstance(norm, nn.GroupNorm):
        if not norm.affine:
            raise ValueError(f"{where}: a GroupNorm without affine weights is not supported")
        return "groupnorm", {"num_groups": norm.num_groups, "eps": norm.eps}
    raise ValueError(f"{where}: norm {type(norm).__name__} has no fpn_zoo equivalent (BatchNorm2d, GroupNorm)")


def _act_config(act: nn.Module, where: str) -> Tuple[Optional[str], Dict[str, Any]]:
    kind = type(act).__name__
    if kind == "ReLU":
        return "relu", {}
    if kind == "LeakyReLU":
        return "leaky_relu", {"negative_slope": act.negative_slope}
    if kind == "ReLU6":
        return "relu6", {}
    if kind in ("SiLU", "Swish"):  # mmcv's Swish is x * sigmoid(x)
        return "silu", {}
    raise ValueError(f"{where}: activation {kind} has no fpn_zoo equivalent (ReLU, ReLU6, LeakyReLU, SiLU)")


def conv_module_config(module: nn.Module, where: str, conv_type: type = nn.Conv2d,
                       order: Tuple[str, str, str] = ("conv", "norm", "act")) -> Dict[str, Any]:
    """Norm and activation of an mmcv ``ConvModule`` as fpn_zoo knobs, checked to be reproducible.

    Args:
        module: the ConvModule.
        where: its name, for messages.
        conv_type: the conv class expected (``nn.ConvTranspose2d`` for mmdet's ``deconv``).
        order: the order expected (FPG pre-activates: ``("act", "conv", "norm")``).

    Returns:
        ``{"norm", "norm_kwargs", "act", "act_kwargs"}``.

    Raises:
        ValueError: not a ConvModule, a conv that is not a plain ``nn.Conv2d`` (``conv_cfg``), an order
            other than conv-norm-act, an unknown norm/act, or a conv bias next to a norm (``bias=True``).
    """
    if type(module).__name__ != "ConvModule":
        raise ValueError(f"{where}: expected an mmcv ConvModule, got {type(module).__name__}")
    conv_class = type(module.conv)
    # mmcv's wrappers (mmcv.cnn.bricks.wrappers) only add support for empty batches
    mmcv_wrapper = conv_class.__module__.startswith("mmcv.cnn.bricks.wrappers") and issubclass(conv_class, conv_type)
    if conv_class is not conv_type and not mmcv_wrapper:
        raise ValueError(f"{where}.conv: conv_cfg builds {type(module.conv).__name__}; only {conv_type.__name__} "
                         "converts")
    if tuple(module.order) != order:
        raise ValueError(f"{where}.order: {module.order} is not supported; fpn_zoo runs {' -> '.join(order)} here")
    norm, norm_kwargs = (None, {})
    if module.with_norm:
        norm, norm_kwargs = _norm_config(getattr(module, module.norm_name), f"{where}.{module.norm_name}")
    act, act_kwargs = _act_config(module.activate, f"{where}.activate") if module.with_activation else (None, {})
    if (module.conv.bias is not None) != (norm is None):
        raise ValueError(f"{where}.conv.bias: fpn_zoo's convs have a bias exactly when there is no norm, "
                         f"but this one has bias={module.conv.bias is not None} with norm={norm!r}")
    return {"norm": norm, "norm_kwargs": norm_kwargs, "act": act, "act_kwargs": act_kwargs}


def _same_config(modules: Sequence[Tuple[str, nn.Module]], owner: str) -> Dict[str, Any]:
    """The one norm/act configuration shared by all ``modules``; a ValueError if they differ."""
    configs = [(where, conv_module_config(m, f"{owner}.{where}")) for where, m in modules]
    first_where, first = configs[0]
    for where, config in configs[1:]:
        if config != first:
            raise ValueError(f"{owner}.{where}: norm/act {config} differ from {first_where}'s {first}; "
                             "fpn_zoo uses one norm and one activation throughout")
    return first


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _spec(channels: Sequence[int], hint: Optional[FeatureSpec], owner: str, first_stride: int = 8) -> FeatureSpec:
    """The input spec: the caller's ``features`` (checked against the peer's channels), else a x2 pyramid."""
    channels = tuple(int(c) for c in channels)
    if hint is not None:
        _require(hint.channels == channels, f"{owner}: features have channels {list(hint.channels)}, but the "
                                            f"peer takes {list(channels)}")
        return hint
    return FeatureSpec(channels, tuple(first_stride * 2 ** i for i in range(len(channels))))


def _create(family: str, spec: FeatureSpec, **kwargs: Any) -> nn.Module:
    """The family's builder itself (not a registry variant, whose args would mix in)."""
    return _BUILDERS[family](spec, **kwargs)


# ------------------------------------------------------------------------------------------ the families


@_converts("ChannelMapper")
def _channel_mapper(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    convs = list(peer.convs)
    extras = list(peer.extra_convs or [])
    config = _same_config([(f"convs.{i}", m) for i, m in enumerate(convs)]
                          + [(f"extra_convs.{i}", m) for i, m in enumerate(extras)], "ChannelMapper")
    kernel = convs[0].conv.kernel_size
    for i, m in enumerate(convs):
        _require(m.conv.kernel_size == kernel and m.conv.padding == (kernel[0] // 2, kernel[1] // 2)
                 and m.conv.stride == (1, 1) and m.conv.dilation == (1, 1) and m.conv.groups == 1,
                 f"ChannelMapper.convs.{i}.conv: only square odd kernels, 'same' padding, stride 1 convert")
    _require(kernel[0] == kernel[1] and kernel[0] % 2 == 1,
             f"ChannelMapper.convs.0.conv.kernel_size: {kernel} is not square and odd")
    neck = _create("channel_mapper", _spec([m.conv.in_channels for m in convs], hint, "ChannelMapper"),
                   out_channels=convs[0].conv.out_channels, kernel_size=kernel[0], extra_levels=len(extras),
                   **config)
    return neck, [(r"^convs\.", "projs."), (r"^extra_convs\.", "extras.")]


@_converts("HRFPN")
def _hrfpn(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    convs = list(peer.fpn_convs)
    config = _same_config([("reduction_conv", peer.reduction_conv)]
                          + [(f"fpn_convs.{i}", m) for i, m in enumerate(convs)], "HRFPN")
    pool = getattr(peer.pooling, "__name__", "")
    _require(pool in ("avg_pool2d", "max_pool2d"), f"HRFPN.pooling: {peer.pooling!r} is not avg/max pooling")
    neck = _create("hrfpn", _spec(peer.in_channels, hint, "HRFPN"), out_channels=peer.out_channels,
                   num_outputs=len(convs),
                   pooling=pool[:3], ceil_mode=False, stride=convs[0].conv.stride[0], **config)
    return neck, [(r"^reduction_conv\.", "reduce."), (r"^fpn_convs\.", "outputs.")]


def _plain_1x1(module: nn.Module, where: str) -> None:
    """A biased 1x1 ConvModule with neither norm nor activation (the non-local theta / phi / g)."""
    config = conv_module_config(module, where)
    _require(config["norm"] is None and config["act"] is None and module.conv.kernel_size == (1, 1),
             f"{where}: expected a plain biased 1x1 conv, got norm={config['norm']!r}, act={config['act']!r}")


@_converts("BFP")
def _bfp(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    config: Dict[str, Any] = {}
    renames: List[Tuple[str, str]] = [(r"^refine\.", "refine.")]
    if peer.refine_type == "conv":
        config = conv_module_config(peer.refine, "BFP.refine")
    elif peer.refine_type == "non_local":
        block = peer.refine
        _require(block.mode == "embedded_gaussian", f"BFP.refine.mode: {block.mode!r} is not 'embedded_gaussian'")
        _require(not block.use_scale, "BFP.refine.use_scale: scaled attention is not supported")
        _require(not block.sub_sample, "BFP.refine.sub_sample: a sub-sampled non-local block is not supported")
        _require(block.inter_channels == block.in_channels,
                 f"BFP.refine.reduction: {block.reduction} != 1 (fpn_zoo's block keeps the channels)")
        for name in ("theta", "phi", "g"):
            _plain_1x1(getattr(block, name), f"BFP.refine.{name}")
        out_config = conv_module_config(block.conv_out, "BFP.refine.conv_out")
        _require(out_config["act"] is None, "BFP.refine.conv_out.activate: an activation there is not supported")
        config = {"norm": out_config["norm"], "norm_kwargs": out_config["norm_kwargs"]}
        renames = [(r"^refine\.conv_out\.", "refine.out."), (r"^refine\.(theta|phi|g)\.", r"refine.\1.")]
    neck = _create("bfp", _spec([peer.in_channels] * peer.num_levels, hint, "BFP"),
                   refine_level=peer.refine_level,
                   refine_type=peer.refine_type, **config)
    return neck, renames


_SSH_BRANCHES = {"conv3x3": "conv3x3", "context_module.conv5x5_1": "context_stem",
                 "context_module.conv5x5_2": "context5x5", "context_module.conv7x7_2": "context7x7.0",
                 "context_module.conv7x7_3": "context7x7.1"}


@_converts("SSH")
def _ssh(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    levels = [getattr(peer, f"ssh_module{i}") for i in range(peer.num_scales)]
    stems = [(f"ssh_module{i}.context_module.conv5x5_1", m.context_module.conv5x5_1) for i, m in enumerate(levels)]
    config = _same_config(stems, "SSH")
    _require(config["act"] == "relu", f"SSH.ssh_module0.context_module.conv5x5_1.activate: mmdet's SSH ends "
                                      f"in F.relu, so its convs' activation must be ReLU, got {config['act']!r}")
    plain = _same_config([(f"ssh_module{i}.{branch}", m.get_submodule(branch)) for i, m in enumerate(levels)
                          for branch in ("conv3x3", "context_module.conv5x5_2", "context_module.conv7x7_3")], "SSH")
    _require(plain["norm"] == config["norm"] and plain["norm_kwargs"] == config["norm_kwargs"]
             and plain["act"] is None, f"SSH: branch convs {plain} do not match the stem {config}")
    neck = _create("ssh", _spec(peer.in_channels, hint, "SSH"), out_channels=list(peer.out_channels), **config)
    renames = [(rf"^ssh_module(\d+)\.{re.escape(theirs)}\.", rf"levels.\1.{ours}.")
               for theirs, ours in _SSH_BRANCHES.items()]
    return neck, renames


@_converts("DilatedEncoder")
def _dilated_encoder(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    norms = [(name, getattr(peer, name)) for name in ("lateral_norm", "fpn_norm")]
    configs = {name: _norm_config(norm, f"DilatedEncoder.{name}") for name, norm in norms}
    blocks = list(peer.dilated_encoder_blocks)
    convs = [(f"dilated_encoder_blocks.{i}.{c}", getattr(b, c)) for i, b in enumerate(blocks)
             for c in ("conv1", "conv2", "conv3")]
    config = _same_config(convs, "DilatedEncoder") if convs else {"norm": configs["lateral_norm"][0],
                                                                  "norm_kwargs": configs["lateral_norm"][1]}
    for name, (norm, kwargs) in configs.items():
        _require(norm == config["norm"] and kwargs == config["norm_kwargs"],
                 f"DilatedEncoder.{name}: {norm} {kwargs} differs from the blocks' {config['norm']} "
                 f"{config['norm_kwargs']}")
    dilations = [b.conv2.conv.dilation[0] for b in blocks]
    for i, b in enumerate(blocks):
        _require(b.conv2.conv.padding == b.conv2.conv.dilation,
                 f"DilatedEncoder.dilated_encoder_blocks.{i}.conv2.conv.padding: only 'same' padding converts")
    spec = _spec([peer.in_channels], hint, "DilatedEncoder", first_stride=32)
    neck = _create("dilated_encoder", spec, out_channels=peer.out_channels,
                   block_mid_channels=peer.block_mid_channels, dilations=dilations, **config)
    renames = [(r"^lateral_conv\.", "lateral.conv."), (r"^lateral_norm\.", "lateral.norm."),
               (r"^fpn_conv\.", "output.conv."), (r"^fpn_norm\.", "output.norm."),
               (r"^dilated_encoder_blocks\.(\d+)\.conv1\.", r"blocks.\1.reduce."),
               (r"^dilated_encoder_blocks\.(\d+)\.conv2\.", r"blocks.\1.dilated."),
               (r"^dilated_encoder_blocks\.(\d+)\.conv3\.", r"blocks.\1.expand.")]
    return neck, renames


@_converts("YOLOV3Neck")
def _yolov3_neck(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    n = peer.num_scales
    convs = [(f"detect{k}.conv{j}", peer.get_submodule(f"detect{k}.conv{j}")) for k in range(1, n + 1)
             for j in range(1, 6)] + [(f"conv{k}", getattr(peer, f"conv{k}")) for k in range(1, n)]
    config = _same_config(convs, "YOLOV3Neck")
    # mmdet lists levels coarsest first; fpn_zoo finest first: mmdet's detect{k} is level n - k.
    neck = _create("yolov3_neck", _spec(list(peer.in_channels)[::-1], hint, "YOLOV3Neck"),
                   out_channels=list(peer.out_channels)[::-1],
                   **config)
    renames = [(rf"^detect{k}\.conv{j}\.", f"detect.{n - k}.{j - 1}.") for k in range(1, n + 1) for j in range(1, 6)]
    renames += [(rf"^conv{k}\.", f"bridges.{n - 1 - k}.") for k in range(1, n)]
    return neck, renames


def _padded_conv(module: nn.Module, where: str) -> Tuple[Dict[str, Any], nn.Conv2d]:
    config = conv_module_config(module, where)
    conv = module.conv
    _require(conv.dilation == (1, 1) and conv.kernel_size[0] == conv.kernel_size[1]
             and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1],
             f"{where}.conv: only square kernels, strides and paddings without dilation convert")
    return config, conv


@_converts("SSDNeck")
def _ssd_neck(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    _require(hint is not None, "SSDNeck does not record its input levels: pass features= (the backbone, its "
                               "feature_info or a FeatureSpec) to from_mmdet_module")
    l2_norm = getattr(peer, "l2_norm", None)
    if l2_norm is not None:
        _require(l2_norm.eps == 1e-10, f"SSDNeck.l2_norm.eps: {l2_norm.eps} is not 1e-10")
        _require(hint.channels[0] == l2_norm.n_dims, f"SSDNeck.l2_norm: normalises {l2_norm.n_dims} channels, but "
                                                     f"the finest of features has {hint.channels[0]}")
    layers = list(peer.extra_layers)
    separable = type(layers[0][1]).__name__ == "DepthwiseSeparableConvModule"
    convs, spatial = [], []
    for i, (reduce, second) in enumerate(layers):
        convs.append((f"extra_layers.{i}.0", reduce))
        if separable:
            _require(type(second).__name__ == "DepthwiseSeparableConvModule",
                     f"SSDNeck.extra_layers.{i}.1: mixes separable and plain convs")
            convs += [(f"extra_layers.{i}.1.depthwise_conv", second.depthwise_conv),
                      (f"extra_layers.{i}.1.pointwise_conv", second.pointwise_conv)]
            spatial.append(_padded_conv(second.depthwise_conv, f"SSDNeck.extra_layers.{i}.1.depthwise_conv")[1])
        else:
            convs.append((f"extra_layers.{i}.1", second))
            spatial.append(_padded_conv(second, f"SSDNeck.extra_layers.{i}.1")[1])
    config = _same_config(convs, "SSDNeck")
    _require(all(c.kernel_size[0] == 3 for c in spatial[:-1]), "SSDNeck.extra_layers: only the last level's "
                                                               "kernel may differ from 3")
    _require(layers[0][0].conv.in_channels == hint.channels[-1],
             f"SSDNeck.extra_layers.0.0: takes {layers[0][0].conv.in_channels} channels, but the coarsest of "
             f"features has {hint.channels[-1]}")
    neck = _create("ssd_neck", hint, extra_channels=[s.out_channels if not separable else p.pointwise_conv.conv
                                                     .out_channels for s, (_, p) in zip(spatial, layers)],
                   strides=[c.stride[0] for c in spatial], paddings=[c.padding[0] for c in spatial],
                   last_kernel_size=spatial[-1].kernel_size[0],
                   l2_norm_scale=float(l2_norm.scale) if l2_norm is not None else None, separable=separable, **config)
    renames = [(r"^l2_norm\.", "l2_norm."), (r"^extra_layers\.(\d+)\.0\.", r"extras.\1.reduce."),
               (r"^extra_layers\.(\d+)\.1\.depthwise_conv\.", r"extras.\1.spatial.depthwise."),
               (r"^extra_layers\.(\d+)\.1\.pointwise_conv\.", r"extras.\1.spatial.pointwise."),
               (r"^extra_layers\.(\d+)\.1\.", r"extras.\1.spatial.")]
    return neck, renames


@_converts("CTResNetNeck")
def _centernet_neck(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    _require(not peer.use_dcn, "CTResNetNeck.use_dcn: deformable convs (DCNv2) are not converted; build the peer "
                               "with use_dcn=False")
    layers = list(peer.deconv_layers)
    convs, ups = layers[0::2], layers[1::2]
    configs = [conv_module_config(m, f"CTResNetNeck.deconv_layers.{2 * i}") for i, m in enumerate(convs)]
    configs += [conv_module_config(m, f"CTResNetNeck.deconv_layers.{2 * i + 1}", nn.ConvTranspose2d)
                for i, m in enumerate(ups)]
    for i, config in enumerate(configs[1:], 1):
        _require(config == configs[0], f"CTResNetNeck.deconv_layers: layer configs differ ({config} vs {configs[0]})")
    for i, m in enumerate(ups):
        conv = m.conv
        _require(conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
                 and conv.output_padding == (0, 0),
                 f"CTResNetNeck.deconv_layers.{2 * i + 1}.conv: only 4x4 stride-2 padding-1 deconvs (exact x2) "
                 f"convert, got kernel {conv.kernel_size}")
    spec = _spec([convs[0].conv.in_channels], hint, "CTResNetNeck", first_stride=32)
    neck = _create("centernet_neck", spec, widths=[m.conv.out_channels for m in convs], **configs[0])
    renames = [(r"^deconv_layers\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) // 2}."
                + ("conv." if int(m.group(1)) % 2 == 0 else "up."))]
    return neck, renames


@_converts("FPN_DropBlock")
def _fpn_dropblock(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    n = len(peer.lateral_convs)
    _require(peer.start_level == 0 and peer.backbone_end_level == peer.num_ins == n,
             f"FPN_DropBlock.start_level/end_level: only all input levels convert (start_level=0, end_level=-1), "
             f"got start_level={peer.start_level}, backbone_end_level={peer.backbone_end_level} of {peer.num_ins}")
    _require(dict(peer.upsample_cfg) in ({"mode": "nearest"}, {"mode": "bilinear"}),
             f"FPN_DropBlock.upsample_cfg: {peer.upsample_cfg} is not supported (a mode, resizing to the size)")
    convs = [(f"lateral_convs.{i}", m) for i, m in enumerate(peer.lateral_convs)]
    convs += [(f"fpn_convs.{i}", m) for i, m in enumerate(peer.fpn_convs)]
    config = _same_config(convs, "FPN_DropBlock")
    plugin = peer.plugin
    if plugin is None:
        drop = dict(drop_prob=0.0)
    else:
        _require(type(plugin).__name__ == "DropBlock",
                 f"FPN_DropBlock.plugin: {type(plugin).__name__} is not supported (only DropBlock)")
        drop = dict(drop_prob=plugin.drop_prob, block_size=plugin.block_size, warmup_iters=plugin.warmup_iters)
    extra_levels = peer.num_outs - n
    extras: Dict[str, Any] = {}
    if extra_levels > 0 and peer.add_extra_convs:
        _require(peer.add_extra_convs in ("on_input", "on_lateral", "on_output"),
                 f"FPN_DropBlock.add_extra_convs: {peer.add_extra_convs!r} is not supported")
        extras = dict(extra_op="conv", extra_source=peer.add_extra_convs[3:],
                      relu_between_extras=bool(peer.relu_before_extra_convs))
    neck = _create("fpn_dropblock", _spec(peer.in_channels, hint, "FPN_DropBlock"), out_channels=peer.out_channels,
                   upsample_mode=peer.upsample_cfg["mode"], extra_levels=extra_levels, **extras, **drop, **config)
    renames = [(r"^lateral_convs\.", "laterals."),
               (r"^fpn_convs\.(\d+)\.", lambda m: (f"outputs.{m.group(1)}." if int(m.group(1)) < n
                                                      else f"extras.{int(m.group(1)) - n}."))]
    return neck, renames


_CSP_PREFIXES = {"reduce_layers": "reduce", "top_down_blocks": "top_down", "downsamples": "down",
                 "bottom_up_blocks": "bottom_up", "out_convs": "out"}
_CSP_PARTS = {"main_conv": "main", "short_conv": "short", "final_conv": "final", "depthwise_conv": "depthwise",
              "pointwise_conv": "pointwise"}


def _csp_pafpn(peer: nn.Module, hint: Optional[FeatureSpec], owner: str) -> Tuple[nn.Module, Renames]:
    n = len(peer.in_channels)
    convs = [(name, m) for name, m in peer.named_modules() if type(m).__name__ == "ConvModule"]
    config = _same_config(convs, owner)
    csps = list(peer.top_down_blocks) + list(peer.bottom_up_blocks)
    inner = [b for csp in csps for b in csp.blocks]
    kinds = {type(b).__name__ for b in inner}
    _require(len(kinds) <= 1 and kinds <= {"DarknetBottleneck", "CSPNeXtBlock"},
             f"{owner}: CSP inner blocks {sorted(kinds)} are not supported")
    _require(not any(csp.channel_attention for csp in csps), f"{owner}.top_down_blocks: channel_attention is not "
                                                            "supported")
    _require(not any(b.add_identity for b in inner), f"{owner}: CSP blocks with add_identity are not supported")
    if "CSPNeXtBlock" in kinds:
        _require(all(b.conv2.depthwise_conv.conv.kernel_size == (5, 5) for b in inner),
                 f"{owner}: only 5x5 CSPNeXt blocks convert")
    first = csps[0]
    ratio = first.main_conv.conv.out_channels / first.final_conv.conv.out_channels
    upsample = peer.upsample
    _require(upsample.size is None and float(upsample.scale_factor) == 2.0 and not upsample.align_corners,
             f"{owner}.upsample: only x2 upsampling without align_corners converts")
    out_conv = peer.out_convs[0]
    out_kernel = (out_conv.depthwise_conv if hasattr(out_conv, "depthwise_conv") else out_conv).conv.kernel_size[0]
    neck = _create("csp_pafpn", _spec(peer.in_channels, hint, owner), out_channels=peer.out_channels,
                   num_blocks=len(first.blocks), block="cspnext" if "CSPNeXtBlock" in kinds else "darknet",
                   expand_ratio=ratio, out_kernel_size=out_kernel,
                   separable=type(peer.downsamples[0]).__name__ == "DepthwiseSeparableConvModule",
                   upsample_mode=upsample.mode, **config)

    def rename(match: "re.Match[str]") -> str:
        prefix, index, rest = match.groups()
        level = int(index)
        if prefix in ("reduce_layers", "top_down_blocks"):  # mmdet counts these from the coarsest step
            level = n - 2 - level
        for theirs, ours in _CSP_PARTS.items():
            rest = rest.replace(f".{theirs}.", f".{ours}.")
        return f"{_CSP_PREFIXES[prefix]}.{level}{rest}"

    return neck, [(rf"^({'|'.join(_CSP_PREFIXES)})\.(\d+)(\..*)$", rename)]


@_converts("YOLOXPAFPN")
def _yolox_pafpn(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    return _csp_pafpn(peer, hint, "YOLOXPAFPN")


@_converts("CSPNeXtPAFPN")
def _cspnext_pafpn(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    return _csp_pafpn(peer, hint, "CSPNeXtPAFPN")


# mmdet FPG transition -> (fpn_zoo part, transition type, kernel, stride) in the FPG configs' layout
_FPG_PARTS = {"same_up": ("pathway", "ConvModule", 3, 2), "across_lateral": ("lateral", "ConvModule", 1, 1),
              "across_down": ("from_coarser", "UpInterpolationConv", 3, 1),
              "across_skip": ("skip", "ConvModule", 1, 1)}


def _fpg_conv(module: nn.Module, where: str, kernel: int, stride: int) -> Dict[str, Any]:
    """Norm / act of a pre-activated (act -> conv -> norm) ConvModule with the expected kernel and stride."""
    _require(module.conv.kernel_size == (kernel, kernel) and module.conv.stride == (stride, stride)
             and module.conv.padding == (kernel // 2, kernel // 2),
             f"{where}.conv: expected a {kernel}x{kernel} stride-{stride} conv with 'same' padding")
    return conv_module_config(module, where, order=("act", "conv", "norm"))


@_converts("FPG")
def _fpg(peer: nn.Module, hint: Optional[FeatureSpec]) -> Tuple[nn.Module, Renames]:
    n_in = peer.num_ins
    _require(peer.start_level == 0 and peer.backbone_end_level == n_in,
             f"FPG.start_level/end_level: only all input levels convert, got start_level={peer.start_level}")
    _require(all(p == "bu" for p in peer.paths), f"FPG.paths: only bottom-up stages convert, got {peer.paths}")
    _require(len(set(peer.inter_channels)) == 1, f"FPG.inter_channels: {peer.inter_channels} differ per level")
    for name in ("same_down_trans", "across_up_trans"):
        _require(getattr(peer, name) is None, f"FPG.{name}: {getattr(peer, name)} is not supported (None only)")
    configs: List[Tuple[str, Dict[str, Any]]] = []
    for s, stage in enumerate(peer.fpn_transitions):
        for i, parts in enumerate(stage):
            for key, module in parts.items():
                if module is None:
                    continue
                where = f"FPG.fpn_transitions.{s}.{i}.{key}"
                _require(key in _FPG_PARTS, f"{where}: {key} transitions are not supported")
                _, kind, kernel, stride = _FPG_PARTS[key]
                _require(type(module).__name__ == kind, f"{where}: a {type(module).__name__}, expected {kind}")
                if kind == "UpInterpolationConv":
                    _require(module.mode == "nearest" and module.scale_factor == 2,
                             f"{where}: only nearest x2 interpolation converts")
                    module = module.conv
                configs.append((where, _fpg_conv(module, where, kernel, stride)))
    for where, config in configs[1:]:
        _require(config == configs[0][1], f"{where}: norm/act {config} differ from {configs[0][0]}'s "
                                          f"{configs[0][1]}")
    outputs = [_fpg_conv(t.conv_out, f"FPG.output_transition.{i}.conv_out", t.conv_out.conv.kernel_size[0], 1)
               for i, t in enumerate(peer.output_transition)]
    _require(all(type(t).__name__ == "LastConv" and t.conv_out.conv.kernel_size == (3, 3)
                 for t in peer.output_transition), "FPG.output_transition: only 3x3 last_conv outputs convert")
    grid = configs[0][1] if configs else outputs[0]
    _require(all(o["act"] == grid["act"] and o["act_kwargs"] == grid["act_kwargs"]
                 and o["norm_kwargs"] in ({}, grid["norm_kwargs"]) for o in outputs),
             f"FPG.output_transition: activation or norm arguments differ from the grid's {grid}")
    extras = list(peer.extra_downsamples)
    conv_extras = bool(extras) and isinstance(extras[0], nn.Conv2d)
    _require(all(isinstance(e, nn.Conv2d) == conv_extras for e in extras), "FPG.extra_downsamples: mixed ops")
    if not conv_extras:
        _require(all(isinstance(e, nn.MaxPool2d) and e.kernel_size == 1 and e.stride == 2 for e in extras),
                 "FPG.extra_downsamples: only 1x1 stride-2 max-pools or convs convert")
    neck = _create("fpg", _spec(peer.in_channels, hint, "FPG"), out_channels=peer.out_channels,
                   inter_channels=peer.inter_channels[0], stack_times=peer.stack_times,
                   skip_inds=[list(s) for s in peer.skip_inds], extra_levels=len(extras),
                   extra_op="conv" if conv_extras else "subsample", norm=grid["norm"], output_norm=outputs[0]["norm"],
                   act=grid["act"], norm_kwargs=grid["norm_kwargs"] or outputs[0]["norm_kwargs"],
                   act_kwargs=grid["act_kwargs"])
    renames: List[Tuple[str, Any]] = [(r"^lateral_convs\.", "laterals."), (r"^extra_downsamples\.", "extras."),
                                      (r"^output_transition\.(\d+)\.conv_out\.", r"outputs.\1.")]
    renames += [(rf"^fpn_transitions\.(\d+)\.(\d+)\.{theirs}\.{'conv.' if kind != 'ConvModule' else ''}",
                 rf"stages.\1.\2.{ours}.") for theirs, (ours, kind, _, _) in _FPG_PARTS.items()]
    return neck, renames
