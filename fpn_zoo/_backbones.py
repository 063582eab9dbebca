"""timm ``features_only`` backbones that take any image size, built by name.

timm builds ViT, swin, EVA ... for one image size (``strict_img_size``); a neck, a detector's resizing
transform or a user's odd-sized images then fail deep inside the patch embedding. Built here, such models
get ``dynamic_img_size=True`` (and ``dynamic_img_pad=True``, so a patch size that does not divide the image,
EVA's 14, works) wherever their constructor takes them; CNNs take any size anyway.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from torch import nn

from ._utils import close_matches

__all__ = ["DYNAMIC_SIZE_KWARGS", "create_features_model", "fixed_size_keyword"]

DYNAMIC_SIZE_KWARGS: Tuple[Tuple[str, Any], ...] = (("dynamic_img_size", True), ("dynamic_img_pad", True))


def fixed_size_keyword(model: nn.Module) -> Optional[str]:
    """The timm keyword a model was built without although it needs it for any image size, else None.

    A patch embedding built with ``strict_img_size=True`` and without ``dynamic_img_size`` only takes the
    image size it was built for (swin, ViT, EVA ... at their defaults).
    """
    for m in model.modules():
        if getattr(m, "strict_img_size", False) and not getattr(m, "dynamic_img_size", False):
            return "dynamic_img_size"
    return None


def _names_unknown_keyword(err: TypeError, key: str) -> bool:
    return f"'{key}'" in str(err) and "argument" in str(err)


def create_features_model(name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` that takes any image size when the model can.

    Keywords in ``kwargs`` win over the dynamic-size defaults (pass ``dynamic_img_size=False`` to keep a
    model strict).

    Raises:
        ValueError: an unknown timm name (with close matches), or a model that was still built for one image
            size (the message names the keyword).
    """
    import timm

    if ":" not in name and not timm.is_model(name):  # "hf-hub:..." names are timm's to resolve
        raise ValueError(f"unknown timm model {name!r}{close_matches(name, timm.list_models(), cutoff=0.6)}")
    dynamic = {k: v for k, v in DYNAMIC_SIZE_KWARGS if k not in kwargs}
    while True:
        try:
            model = timm.create_model(name, features_only=True, pretrained=pretrained, **kwargs, **dynamic)
            break
        except TypeError as e:  # a constructor that does not know the keyword: a model of any size already
            dropped = [k for k in dynamic if _names_unknown_keyword(e, k)]
            if not dropped:
                raise
            for k in dropped:
                dynamic.pop(k)
    key = fixed_size_keyword(model)
    if key is not None and kwargs.get(key) is not False:
        raise ValueError(
            f"timm model {name!r} only takes its default image size, and its constructor refused {key}=True"
        )
    return model
