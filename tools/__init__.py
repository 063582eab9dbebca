"""Repository tooling, not installed with ``fpn_zoo``: the docs generator (``python -m tools.docs_gen``) and the
timm backbone sweep (``python -m tools.sweep``). Run from the repository root."""
