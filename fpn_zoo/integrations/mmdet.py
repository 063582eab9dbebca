"""fpn_zoo necks in mmdetection 3.x configs: ``neck=dict(type="FpnZooNeck", name="pan", ...)``.

Importing this module registers :class:`FpnZooNeck` in ``mmdet.registry.MODELS``; a config does it with
``custom_imports=dict(imports=["fpn_zoo.integrations.mmdet"], allow_failed_imports=False)``. It is never
imported by ``import fpn_zoo`` (mmdet and mmengine stay optional).

The registered name has no dot: mmengine reads ``type="a.b"`` as "``b`` in the registry scope ``a``".

Example config (mmdet's RetinaNet R-50 with PANet in place of its FPN)::

    custom_imports = dict(imports=["fpn_zoo.integrations.mmdet"], allow_failed_imports=False)
    model = dict(
        type="RetinaNet",
        backbone=dict(type="ResNet", depth=50, out_indices=(0, 1, 2, 3), ...),
        neck=dict(type="FpnZooNeck", name="pan", in_channels=[256, 512, 1024, 2048], start_level=1,
                  out_channels=256, extra_levels=2, extra_op="conv", extra_source="input"),
        bbox_head=dict(type="RetinaHead", in_channels=256, ...),
    )
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor

from .. import BackboneMismatch, FeatureSpec, create_neck

__all__ = ["FpnZooNeck"]


@MODELS.register_module()
class FpnZooNeck(BaseModule):
    """Any fpn_zoo neck variant behind mmdet's neck contract: a tuple of maps in, a tuple of maps out.

    Args:
        name: a registered fpn_zoo variant (``fpn_zoo.list_necks()``).
        in_channels: channels of every backbone map the neck is given (mmdet's ``in_channels``).
        out_channels: the neck's width; default: the variant's.
        strides: each input map's stride; default ``4, 8, 16, 32, ...`` (a ResNet's C2, C3, ...).
        start_level: the first input used (mmdet's ``start_level``: 1 skips C2, as RetinaNet does).
        input_fmt: ``"NCHW"`` (default) or ``"NHWC"`` for swin-like backbones returning NHWC maps.
        init_cfg: mmengine's initialisation config; default: the neck's own initialisation, kept.
        **overrides: any other argument of the variant's family (``norm="batchnorm"``, ``extra_levels=2``).

    Raises:
        ValueError: unknown variant or argument (with close matches), or an inconsistent level layout.
        BackboneMismatch: the variant declines these maps (e.g. ``simple_pyramid`` wants one single-stride
            map, ``bfp`` levels of one width); the message names the variant and what it needs.
    """

    def __init__(
        self,
        name: str,
        in_channels: Sequence[int],
        out_channels: Optional[int] = None,
        strides: Optional[Sequence[Union[int, float]]] = None,
        start_level: int = 0,
        input_fmt: str = "NCHW",
        init_cfg: Optional[Union[Dict[str, Any], List[Dict[str, Any]]]] = None,
        **overrides: Any,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        in_channels = list(in_channels)
        if strides is None:
            strides = [4 * 2 ** i for i in range(len(in_channels))]
        strides = list(strides)
        if len(strides) != len(in_channels):
            raise ValueError(
                f"got {len(in_channels)} in_channels but {len(strides)} strides; give one of each per level"
            )
        if isinstance(start_level, bool) or not isinstance(start_level, int) or not 0 <= start_level < len(in_channels):
            raise ValueError(f"start_level must be an int in [0, {len(in_channels) - 1}], got {start_level!r}")
        if out_channels is not None:
            overrides["out_channels"] = out_channels
        self.start_level = start_level
        self.in_channels = in_channels
        spec = FeatureSpec(tuple(in_channels[start_level:]), tuple(strides[start_level:]), input_fmt)
        try:
            self.neck = create_neck(name, spec, **overrides)
        except BackboneMismatch as e:
            raise BackboneMismatch(
                f"FpnZooNeck name={name!r} declines maps of {list(spec.channels)} channels at strides "
                f"{list(spec.reductions)}: {e}. In a config, start_level (or the backbone's out_indices) picks the "
                "maps and strides gives theirs"
            ) from None
        self.out_channels = self.neck.feature_info.channels()
        self.strides = self.neck.feature_info.reduction()

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Map the backbone's tuple of maps to the neck's tuple of NCHW maps, finest first."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FpnZooNeck expected {len(self.in_channels)} maps (in_channels), got {len(inputs)}")
        return tuple(self.neck(list(inputs[self.start_level:])))
