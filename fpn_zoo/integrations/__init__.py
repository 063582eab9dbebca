"""Bridges to other frameworks, each imported only on demand (``fpn_zoo.integrations.mmdet`` needs mmdet)."""
