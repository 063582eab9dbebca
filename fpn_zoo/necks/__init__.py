"""The built-in families; importing this package registers them."""
from . import fpn, pan  # noqa: F401

__all__ = ["fpn", "pan"]
