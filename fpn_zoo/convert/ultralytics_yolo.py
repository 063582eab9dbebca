"""An ultralytics YOLOv8 / YOLO11 model's neck -> the ``yolo_pan`` neck with its configuration and weights.

:func:`from_ultralytics` takes a built ``DetectionModel`` (or the ``YOLO`` wrapper, or its ``model`` sequential),
finds the neck in its layer table (each layer records ``f``, where its input comes from), checks that the table
is the yamls' top-down / bottom-up pattern, reads widths, depths and block kinds from the modules, builds
``yolo_pan`` and loads the weights with an exact key correspondence. ultralytics is never imported: layers are
recognised by class name, so any ultralytics release whose layers keep these names and attributes converts.

The neck taken over is the ``head:`` section up to ``Detect`` plus, with ``coarse_blocks=True``, the SPPF /
C2PSA layers that end the backbone (they run on the coarsest map only). Anything fpn_zoo does not reproduce
(another norm or activation, a YOLO26 unactivated SPPF, C3k2 attention blocks, a C2f expansion other than
0.5, ...) is a ``ValueError`` naming the layer attribute.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .._features import FeatureSpec
from ..layers.conv import ConvNormAct
from ..necks.yolo_pan import YOLOPAN, psa_heads, yolo_pan
from .dispatch import register_converter

__all__ = ["from_ultralytics", "ultralytics_neck_layers"]

# Child names inside a peer block -> ours, by the block's class name (ultralytics' ``cv1`` / ``cv2`` / ``m``).
_CHILD_NAMES: Dict[str, Dict[str, str]] = {
    "C2f": {"cv1": "split", "cv2": "merge", "m": "blocks"},
    "C3k2": {"cv1": "split", "cv2": "merge", "m": "blocks"},
    "C2PSA": {"cv1": "split", "cv2": "merge", "m": "blocks"},
    "C3k": {"cv1": "main", "cv2": "short", "cv3": "final", "m": "blocks"},
    "Bottleneck": {"cv1": "conv1", "cv2": "conv2"},
    "SPPF": {"cv1": "reduce", "cv2": "merge"},
    "Conv": {"bn": "norm"},
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _layer_table(model: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` of layers of a ``YOLO``, a ``DetectionModel`` or the sequential itself."""
    for _ in range(3):
        if isinstance(model, nn.Sequential) and all(hasattr(m, "f") for m in model):
            return model
        model = getattr(model, "model", None)
    raise TypeError("from_ultralytics takes an ultralytics YOLO, DetectionModel or its model.model sequential "
                    "(layers carrying ultralytics' 'f' / 'i' attributes)")


def _kind(module: nn.Module) -> str:
    return type(module).__name__


def ultralytics_neck_layers(model: nn.Module, coarse_blocks: bool = True) -> Dict[str, Any]:
    """Locate the neck in an ultralytics layer table and check it is the YOLOv8 / YOLO11 pattern.

    Returns:
        ``{"inputs": layer indices whose outputs feed the neck, finest first; "coarse": SPPF / C2PSA indices;
        "top_down", "down", "bottom_up": indices per level (finest first); "outputs": the indices Detect
        reads}``.

    Raises:
        ValueError: a layer that breaks the pattern (named by index and attribute).
    """
    layers = _layer_table(model)
    ups = [i for i, m in enumerate(layers) if _kind(m) == "Upsample"]
    _require(bool(ups), "ultralytics model: no nn.Upsample layer, so no top-down path to convert")
    start = ups[0]
    heads = [i for i, m in enumerate(layers) if isinstance(m.f, (list, tuple)) and _kind(m) != "Concat"]
    _require(bool(heads) and heads[-1] == len(layers) - 1, "ultralytics model: the last layer is not a detection "
                                                           "head reading several levels (Detect)")
    outputs = list(layers[-1].f)
    n = len(outputs)
    _require(n >= 2, f"model.{len(layers) - 1}.f: the head reads {n} level(s); a PAN needs at least two")

    def expect(i: int, kind: Sequence[str], f: Any) -> nn.Module:
        _require(i < len(layers) - 1, f"model.{i}: the neck ends early (expected {kind[0]})")
        m = layers[i]
        _require(_kind(m) in kind, f"model.{i}: expected {' or '.join(kind)}, found {_kind(m)}")
        _require(m.f == f, f"model.{i}.f: expected {f}, found {m.f}")
        return m

    coarse_top = start - 1
    i, laterals, top_down, down, bottom_up = start, [], [], [], []
    for _ in range(n - 1):  # top-down, coarsest fusion first
        up = expect(i, ("Upsample",), -1)
        _require(up.mode == "nearest", f"model.{i}.mode: {up.mode!r}; only nearest upsampling converts")
        concat = layers[i + 1]
        _require(_kind(concat) == "Concat" and isinstance(concat.f, list) and len(concat.f) == 2
                 and concat.f[0] == -1, f"model.{i + 1}: expected Concat of [-1, backbone level], found "
                                        f"{_kind(concat)} {concat.f}")
        _require(getattr(concat, "d", 1) == 1, f"model.{i + 1}.d: concatenates along dim {concat.d}, not channels")
        laterals.append(concat.f[1])
        expect(i + 2, ("C2f", "C3k2"), -1)
        top_down.append(i + 2)
        i += 3
    above = [*top_down[::-1][1:], coarse_top]  # the map each bottom-up fusion takes, level 1 first
    top_down, laterals = top_down[::-1], laterals[::-1]  # finest first
    for level in range(n - 1):
        conv = expect(i, ("Conv",), -1)
        _require(conv.conv.stride == (2, 2) and conv.conv.kernel_size == (3, 3) and conv.conv.padding == (1, 1),
                 f"model.{i}.conv: expected a 3x3 stride-2 conv with padding 1")
        expect(i + 1, ("Concat",), [-1, above[level]])
        expect(i + 2, ("C2f", "C3k2"), -1)
        down.append(i)
        bottom_up.append(i + 2)
        i += 3
    _require(i == len(layers) - 1, f"model.{i}: unexpected layer {_kind(layers[i])} between the neck and the head")
    _require(outputs == [top_down[0], *bottom_up], f"model.{i}.f: the head reads {outputs}, expected the neck's "
                                                   f"outputs {[top_down[0], *bottom_up]}")
    coarse: List[int] = []
    if coarse_blocks:
        j = coarse_top
        while j >= 0 and _kind(layers[j]) in ("SPPF", "C2PSA") and layers[j].f == -1:
            coarse.insert(0, j)
            j -= 1
        kinds = [_kind(layers[k]) for k in coarse]
        _require(kinds in ([], ["SPPF"], ["C2PSA"], ["SPPF", "C2PSA"]),
                 f"model.{coarse[0] if coarse else coarse_top}: coarse blocks {kinds}; only SPPF then C2PSA convert")
    coarse_input = coarse[0] - 1 if coarse else coarse_top
    for j in laterals:
        _require(j < start and j not in coarse, f"model.{start}: the top-down path reads layer {j}, which is not a "
                                                "backbone layer")
    return {"inputs": [*laterals, coarse_input], "coarse": coarse, "top_down": top_down, "down": down,
            "bottom_up": bottom_up, "outputs": outputs}


def _block_config(block: nn.Module, where: str) -> Tuple[str, bool, bool, int]:
    """(style, c3k, shortcut, num_blocks) of a C2f / C3k2 layer, checked to be reproducible."""
    style = "c2f" if _kind(block) == "C2f" else "c3k2"
    out = block.cv2.conv.out_channels
    _require(block.c == out // 2 and block.cv1.conv.out_channels == 2 * block.c,
             f"{where}.c: hidden width {block.c} for {out} output channels; only the expansion e=0.5 converts")
    inner = list(block.m)
    _require(bool(inner), f"{where}.m: no inner blocks")
    kinds = {_kind(m) for m in inner}
    _require(len(kinds) == 1 and kinds <= {"Bottleneck", "C3k"},
             f"{where}.m: inner blocks {sorted(kinds)}; only Bottleneck or C3k convert (no C3k2 attention blocks)")
    c3k = kinds == {"C3k"}
    _require(not (c3k and style == "c2f"), f"{where}.m: C3k inside a C2f")
    bottlenecks = [b for m in inner for b in (m.m if c3k else [m])]
    shortcuts = {bool(b.add) for b in bottlenecks}
    _require(len(shortcuts) == 1, f"{where}.m: bottlenecks mix residual and plain")
    for k, m in enumerate(inner):
        if c3k:
            _require(len(m.m) == 2 and m.cv1.conv.out_channels == block.c // 2,
                     f"{where}.m.{k}: a C3k of {len(m.m)} bottlenecks at width {m.cv1.conv.out_channels}; only "
                     f"2 at {block.c // 2} convert")
    for k, b in enumerate(bottlenecks):
        hidden = b.cv1.conv.out_channels
        expected = b.cv1.conv.in_channels if (c3k or style == "c2f") else block.c // 2
        _require(b.cv1.conv.kernel_size == (3, 3) and b.cv2.conv.kernel_size == (3, 3) and hidden == expected
                 and b.cv2.conv.groups == 1, f"{where}.m: bottleneck {k} is not two 3x3 convs through {expected} "
                                             f"channels")
    return style, c3k, shortcuts.pop(), len(inner)


def _norm_act(module: nn.Module, where: str) -> Tuple[float, float]:
    norm = module.bn
    _require(type(norm) is nn.BatchNorm2d and norm.affine and norm.track_running_stats,
             f"{where}.bn: {type(norm).__name__}; only an affine BatchNorm2d with running stats converts")
    _require(module.conv.bias is None, f"{where}.conv.bias: a conv bias next to BatchNorm does not convert")
    return norm.eps, norm.momentum


def _our_name(peer_layer: nn.Module, name: str) -> str:
    """A peer parameter / module path inside one layer, in our child names."""
    if not name:
        return ""
    parts, module, ours = name.split("."), peer_layer, []
    for part in parts:
        ours.append(_CHILD_NAMES.get(_kind(module), {}).get(part, part))
        module = getattr(module, part, None) if not part.isdigit() else module[int(part)]
        if module is None:  # a parameter or buffer: the last part
            break
    return ".".join(ours)


def _check_convs(peer_layer: nn.Module, ours: nn.Module, prefix: str, where: str) -> None:
    """Every peer ``Conv`` lands on a ConvNormAct of the same geometry and activation."""
    for name, m in peer_layer.named_modules():
        if _kind(m) != "Conv":
            continue
        target = ours.get_submodule((prefix + _our_name(peer_layer, name)).rstrip("."))
        at = f"{where}.{name}" if name else where
        _require(isinstance(target, ConvNormAct), f"{at}: no fpn_zoo conv block corresponds")
        for attr in ("kernel_size", "stride", "padding", "dilation", "groups"):
            _require(getattr(m.conv, attr) == getattr(target.conv, attr),
                     f"{at}.conv.{attr}: {getattr(m.conv, attr)} in the peer, {getattr(target.conv, attr)} here")
        theirs_act = _kind(m.act)
        _require(theirs_act in ("SiLU", "Identity"), f"{at}.act: {theirs_act}; only SiLU (or none) converts")
        ours_act = "SiLU" if hasattr(target, "act") else "Identity"
        _require(theirs_act == ours_act, f"{at}.act: {theirs_act} in the peer where the reference layout has "
                                         f"{ours_act} (e.g. YOLO26's unactivated SPPF)")


@register_converter("DetectionModel", "YOLO")
def from_ultralytics(model: nn.Module, features: Any = None, *, coarse_blocks: bool = True) -> YOLOPAN:
    """Build the ``yolo_pan`` neck equivalent to an ultralytics YOLOv8 / YOLO11 model's neck, with its weights.

    The result has the peer's dtype, device and train/eval mode; fed the maps the peer's neck reads (see
    :func:`ultralytics_neck_layers`' ``inputs``: for yolov8n.yaml layers 4, 6, 8), it returns the maps its
    ``Detect`` reads (P3, P4, P5).

    Args:
        model: an ultralytics ``YOLO``, ``DetectionModel`` (or Segment / Pose ... model) or its ``model.model``.
        features: the backbone levels the neck will run on (a timm model, ``feature_info``, ``FeatureSpec``
            ...), for the true strides; their channels must be the peer's. Default: the peer's channels at
            strides 8, 16, 32 (P3-P5).
        coarse_blocks: take over the SPPF / C2PSA layers ending the backbone (the neck then reads the map
            before them). False: the ``head:`` section alone.

    Raises:
        TypeError: not an ultralytics model.
        ValueError: a layer table or block configuration ``yolo_pan`` does not reproduce (names the layer).
    """
    layers = _layer_table(model)
    found = ultralytics_neck_layers(layers, coarse_blocks)
    top_down = [layers[i] for i in found["top_down"]]
    bottom_up = [layers[i] for i in found["bottom_up"]]
    downs = [layers[i] for i in found["down"]]
    coarse = [layers[i] for i in found["coarse"]]
    n = len(top_down) + 1

    configs = [_block_config(layers[i], f"model.{i}") for i in found["top_down"] + found["bottom_up"]]
    styles, shortcuts, depths = ({c[k] for c in configs} for k in (0, 2, 3))
    _require(len(styles) == 1, f"model.{found['top_down'][0]}: the neck mixes C2f and C3k2 blocks")
    _require(len(shortcuts) == 1, "ultralytics neck: blocks mix residual and plain bottlenecks")
    _require(len(depths) == 1, f"ultralytics neck: blocks have {sorted(depths)} inner blocks; yolo_pan uses one count")
    c3k_flags = [c[1] for c in configs]
    placements = {"none": [False] * len(configs), "all": [True] * len(configs),
                  "last": [False] * (len(configs) - 1) + [True]}
    c3k = next((name for name, flags in placements.items() if flags == c3k_flags), None)
    _require(c3k is not None, f"ultralytics neck: C3k inner blocks in blocks {c3k_flags}; only none, the last or "
                              "all convert")

    widths = [top_down[0].cv2.conv.out_channels] + [b.cv2.conv.out_channels for b in bottom_up]
    for level, (conv, where) in enumerate(zip(downs, found["down"])):
        _require(conv.conv.out_channels == widths[level], f"model.{where}.conv.out_channels: "
                                                          f"{conv.conv.out_channels}, expected {widths[level]}")
    coarse_out = bottom_up[-1].cv1.conv.in_channels - widths[-2]
    above = [b.cv2.conv.out_channels for b in top_down[1:]] + [coarse_out]
    channels = [b.cv1.conv.in_channels - a for b, a in zip(top_down, above)]
    sppf = next((m for m in coarse if _kind(m) == "SPPF"), None)
    c2psa = next((m for m in coarse if _kind(m) == "C2PSA"), None)
    if coarse:
        channels.append(coarse[0].cv1.conv.in_channels)
    else:
        channels.append(coarse_out)
    where = f"model.{found['coarse'][0]}" if coarse else ""
    if sppf is not None:
        _require(sppf.cv2.conv.out_channels == widths[-1], f"{where}.cv2: SPPF gives {sppf.cv2.conv.out_channels} "
                                                           f"channels; yolo_pan's SPPF gives the P{n + 2} width "
                                                           f"{widths[-1]}")
        _require(getattr(sppf, "n", 3) == 3 and not getattr(sppf, "add", False),
                 f"{where}: SPPF with n={getattr(sppf, 'n', 3)} pools or a shortcut does not convert")
        _require(sppf.cv1.conv.out_channels == sppf.cv1.conv.in_channels // 2, f"{where}.cv1: not half the input")
    if c2psa is not None:
        at = f"model.{found['coarse'][-1]}"
        _require(c2psa.c == c2psa.cv1.conv.in_channels // 2, f"{at}.c: only the expansion e=0.5 converts")
        for k, block in enumerate(c2psa.m):
            attn = block.attn
            _require(block.add and attn.num_heads == psa_heads(c2psa.c) and attn.key_dim == attn.head_dim // 2,
                     f"{at}.m.{k}: PSABlock with shortcut={block.add}, num_heads={attn.num_heads}, "
                     f"key_dim={attn.key_dim}; ultralytics' defaults (shortcut, one head per 64 channels, "
                     "attn_ratio 0.5) convert")
    all_convs = [(f"model.{i}.{name}".rstrip("."), m) for i in found["coarse"] + found["top_down"] + found["down"]
                 + found["bottom_up"] for name, m in layers[i].named_modules() if _kind(m) == "Conv"]
    stats = {(where, _norm_act(m, where)) for where, m in all_convs}
    eps_momentum = {s for _, s in stats}
    _require(len(eps_momentum) == 1, f"ultralytics neck: BatchNorms differ in (eps, momentum): {sorted(eps_momentum)}")
    eps, momentum = eps_momentum.pop()

    spec = FeatureSpec(tuple(channels), tuple(8 * 2 ** k for k in range(n)))
    if features is not None:
        hint = FeatureSpec.resolve(features)
        _require(hint.channels == spec.channels, f"from_ultralytics: features have channels {list(hint.channels)}, "
                                                 f"but the neck reads {list(spec.channels)}")
        spec = hint
    style, _, shortcut, num_blocks = configs[0]
    neck = yolo_pan(spec, out_channels=widths, num_blocks=num_blocks, block=style, c3k=c3k, shortcut=shortcut,
                    sppf=sppf is not None, sppf_kernel=sppf.m.kernel_size if sppf is not None else 5,
                    c2psa_blocks=len(c2psa.m) if c2psa is not None else 0,
                    norm_kwargs={"eps": eps, "momentum": momentum})

    prefixes = {i: f"coarse.{_kind(layers[i]).lower()}." for i in found["coarse"]}
    for level in range(n - 1):
        prefixes[found["top_down"][level]] = f"top_down.{level}."
        prefixes[found["down"][level]] = f"down.{level}."
        prefixes[found["bottom_up"][level]] = f"bottom_up.{level}."
    mapped: Dict[str, torch.Tensor] = {}
    for i, prefix in prefixes.items():
        _check_convs(layers[i], neck, prefix, f"model.{i}")
        for key, value in layers[i].state_dict().items():
            mapped[prefix + _our_name(layers[i], key)] = value
    ours = neck.state_dict()
    missing, unexpected = sorted(set(ours) - set(mapped)), sorted(set(mapped) - set(ours))
    _require(not missing and not unexpected, f"ultralytics neck: state dicts do not correspond; fpn_zoo tensors "
                                             f"with no peer tensor {missing}, peer tensors with none here {unexpected}")
    for key, value in mapped.items():
        _require(ours[key].shape == value.shape, f"ultralytics neck: {key} is {tuple(value.shape)} in the peer, "
                                                 f"{tuple(ours[key].shape)} here")
    param = next(layers.parameters())
    neck.to(device=param.device, dtype=param.dtype)
    neck.load_state_dict(mapped)
    return neck.train(layers.training)
