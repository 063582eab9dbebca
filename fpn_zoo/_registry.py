"""The registry: families are Python, variants (and topologies) are data.

Shaped like timm's model registry (``timm/models/_registry.py``): :func:`register_neck` is a decorator for
family builders, :func:`list_necks` filters with fnmatch wildcards and sorts naturally, :func:`is_neck`,
:func:`neck_cfg`. Variants come from ``registry.yaml`` and from plugins: installed packages that declare an
entry point in the group ``fpn_zoo.necks``.

A plugin entry point names either a module (imported; its ``@register_neck`` families register, and its
``NECK_VARIANTS`` attribute, if any, is read) or a callable (called with no arguments). What it yields is
None, a path to a YAML file laid out like ``registry.yaml``, or that mapping itself.

This module is a leaf: it imports no family. ``fpn_zoo/__init__.py`` imports the built-in families (their
``@register_neck`` runs then); ``registry.yaml`` and the plugins are read on first use, once, under a lock
(other threads wait; a plugin calling back into the registry while it loads sees what is loaded so far).
A failed load raises and leaves the registry as it was, so the next call retries. Each registry document
(``registry.yaml``, one plugin) registers all or nothing.
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib.metadata
import inspect
import os
import re
import threading
import traceback
import types
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ._utils import close_matches
from .graph import Topology

__all__ = [
    "NeckCfg", "register_neck", "register_variant", "register_topology", "list_necks", "list_families",
    "is_neck", "neck_cfg", "get_family", "get_topology", "list_topologies", "family_args", "check_family_args",
    "registry_path",
    "PLUGIN_GROUP",
]

PLUGIN_GROUP = "fpn_zoo.necks"
BUILTIN = "fpn_zoo registry.yaml"
_VARIANT_KEYS = {"family", "args", "summary", "paper", "tags", "override"}
_ANCHOR_PREFIX = "x-"  # top-level keys holding YAML anchors for merge keys (``x-common: &common {...}``)


@dataclass(frozen=True)
class Family:
    """A registered family: its name, its builder ``fn(spec, **kwargs) -> nn.Module`` and where it came from."""

    name: str
    builder: Callable[..., Any]
    source: str


@dataclass(frozen=True)
class NeckCfg:
    """A named variant: its family, arguments (merged over the family's defaults) and description."""

    name: str
    family: str
    args: Dict[str, Any]
    summary: str = ""
    paper: str = ""
    tags: Tuple[str, ...] = ()
    source: str = BUILTIN

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "family": self.family, "args": dict(self.args), "summary": self.summary,
                "paper": self.paper, "tags": list(self.tags), "source": self.source}


UNLOADED, LOADING, LOADED = "unloaded", "loading", "loaded"


@dataclass
class _State:
    """Everything registered. ``status`` moves UNLOADED -> LOADING -> LOADED (back to UNLOADED if loading
    fails, so the next call retries); ``failed`` maps a name a failed plugin defines to that plugin's error."""

    families: Dict[str, Family] = field(default_factory=dict)
    variants: Dict[str, NeckCfg] = field(default_factory=dict)
    topologies: Dict[str, Tuple[Topology, str]] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    status: str = UNLOADED


_state = _State()
_lock = threading.RLock()  # re-entrant: plugins call back into the registry while the loading thread holds it


def _natural_key(name: str) -> List[Union[int, str]]:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name.lower())]


def _unknown(kind: str, name: str, choices: Mapping[str, Any]) -> ValueError:
    """``unknown neck 'x'; did you mean ...``, or, for a name a failed plugin defines, that plugin's failure."""
    if name in _state.failed:
        return ValueError(f"{kind} {name!r} is not available: {_state.failed[name]}")
    return ValueError(f"unknown {kind} {name!r}{close_matches(name, choices)}")


def _caller_source(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


# ---------------------------------------------------------------------------------------------- families


def register_neck(name: Union[str, Callable[..., Any], None] = None, *, override: bool = False):
    """Register a family builder ``fn(spec: FeatureSpec, **kwargs) -> nn.Module`` (decorator).

    Its keyword arguments and their defaults are the family's knobs; variants in ``registry.yaml`` set them.

    Example:
        >>> import fpn_zoo
        >>> @fpn_zoo.register_neck("my_family_doc_example", override=True)
        ... def my_family(spec, *, out_channels: int = 64):
        ...     return fpn_zoo.create_neck("fpn", spec, out_channels=out_channels)

    Raises:
        ValueError: the name is taken (naming both sources), unless ``override=True``.
    """

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        family = name if isinstance(name, str) else fn.__name__
        source = _caller_source(fn)
        with _lock:
            old = _state.families.get(family)
            if old is not None and not override and old.source != source:
                raise ValueError(
                    f"neck family {family!r} is registered twice: by {old.source} and by {source}; "
                    "pass override=True to replace it on purpose"
                )
            _state.families[family] = Family(family, fn, source)
        return fn

    if callable(name) and not isinstance(name, str):
        fn, name = name, None
        return decorator(fn)
    return decorator


def get_family(name: str) -> Family:
    _ensure_loaded()
    try:
        return _state.families[name]
    except KeyError:
        raise _unknown("neck family", name, _state.families) from None


def list_families() -> List[str]:
    _ensure_loaded()
    return sorted(_state.families, key=_natural_key)


def check_family_args(family: str, names: Iterable[str], owner: str) -> None:
    """The one check of argument names: every name must be a keyword argument of ``family``'s builder.

    Used for a variant's ``args`` when it is registered and for the overrides given to ``create_neck``;
    families trust the names that reach them.

    Args:
        family: a registered family.
        names: the argument names to check.
        owner: who passes them, leading the message (``"neck 'fpn' (family 'fpn')"``).

    Raises:
        ValueError: ``{owner} takes no argument 'x'; did you mean ...; its arguments are ...``.
    """
    known = family_args(family)
    for key in names:
        if key not in known:
            raise ValueError(f"{owner} takes no argument {key!r}{close_matches(key, known)}; "
                             f"its arguments are {', '.join(known)}")


def family_args(family: str) -> Dict[str, Any]:
    """The keyword arguments of a family and their defaults (``inspect.Parameter.empty`` if required)."""
    params = list(inspect.signature(get_family(family).builder).parameters.values())[1:]
    return {p.name: p.default for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


# -------------------------------------------------------------------------------------------- topologies


def register_topology(topology: Topology, *, source: str = "python", override: bool = False) -> Topology:
    """Register a :class:`~fpn_zoo.graph.Topology` under its name (after validating it)."""
    topology.validate()
    with _lock:
        old = _state.topologies.get(topology.name)
        if old is not None and not override and old[1] != source:
            raise ValueError(
                f"topology {topology.name!r} is defined twice: by {old[1]} and by {source}; "
                "set override: true to replace it on purpose"
            )
        _state.topologies[topology.name] = (topology, source)
    return topology


def get_topology(name: str) -> Topology:
    _ensure_loaded()
    try:
        return _state.topologies[name][0]
    except KeyError:
        raise _unknown("topology", name, _state.topologies) from None


def list_topologies() -> List[str]:
    _ensure_loaded()
    return sorted(_state.topologies, key=_natural_key)


# ---------------------------------------------------------------------------------------------- variants


def _check_entry_types(name: str, source: str, entry: Mapping[str, Any]) -> None:
    """Refuse wrongly typed variant fields (``tags: fpn``, ``override: "false"``) instead of coercing them."""

    def bad(key: str, expected: str) -> ValueError:
        value = entry[key]
        return ValueError(f"neck {name!r} ({source}): {key!r} must be {expected}, got {type(value).__name__} {value!r}")

    if not isinstance(entry.get("family", ""), str):
        raise bad("family", "a family name (a string)")
    for key in ("summary", "paper"):
        if not isinstance(entry.get(key, ""), str):
            raise bad(key, "a string")
    tags = entry.get("tags", ())
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise bad("tags", "a list of strings")
    if entry.get("args") is not None and not isinstance(entry["args"], Mapping):
        raise bad("args", "a mapping of the family's arguments")
    if not isinstance(entry.get("override", False), bool):
        raise bad("override", "true or false")


def register_variant(
    name: str,
    family: str,
    args: Optional[Mapping[str, Any]] = None,
    *,
    summary: str = "",
    paper: str = "",
    tags: Sequence[str] = (),
    source: str = "python",
    override: bool = False,
) -> NeckCfg:
    """Register a named variant of a family (what an entry of ``registry.yaml`` does).

    Raises:
        ValueError: unknown family, an argument the family does not take, a wrongly typed field (naming the
            variant and the field), or a duplicate name.
    """
    _check_entry_types(name, source, {"family": family, "args": args, "summary": summary, "paper": paper,
                                      "tags": tags, "override": override})
    with _lock:
        if family not in _state.families:
            raise ValueError(
                f"neck {name!r} ({source}) names the unknown family {family!r}"
                f"{close_matches(family, _state.families)}"
            )
        args = dict(args or {})
        check_family_args(family, args, f"neck {name!r} ({source}) of family {family!r}")
        old = _state.variants.get(name)
        if old is not None and not override:
            raise ValueError(
                f"neck {name!r} is defined twice: by {old.source} and by {source}; "
                "set override: true in the later one to replace it on purpose"
            )
        cfg = NeckCfg(name, family, args, summary, paper, tuple(tags), source)
        _state.variants[name] = cfg
        return cfg


# ------------------------------------------------------------------------------------------ registry documents


def _add_document(doc: Any, source: str) -> None:
    """Register the ``topologies:`` and ``necks:`` of one registry document, all or nothing."""
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        raise ValueError(f"{source}: expected a mapping with 'necks' (and optional 'topologies'), got {type(doc).__name__}")
    unknown = {k for k in doc if not str(k).startswith(_ANCHOR_PREFIX)} - {"necks", "topologies"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)}; expected 'necks' and 'topologies' "
                         f"(and {_ANCHOR_PREFIX}* keys holding YAML anchors)")
    topologies, necks = doc.get("topologies") or {}, doc.get("necks") or {}
    for section, entries in (("topologies", topologies), ("necks", necks)):
        if not isinstance(entries, Mapping):
            raise ValueError(f"{source}: {section!r} must be a mapping of names, got {type(entries).__name__}")
    with _transaction():
        for name, spec in topologies.items():
            if not isinstance(spec, Mapping):
                raise ValueError(f"{source}: topology {name!r} must be a mapping, got {type(spec).__name__}")
            spec = dict(spec)
            override = spec.pop("override", False)
            if not isinstance(override, bool):
                raise ValueError(f"{source}: topology {name!r}: 'override' must be true or false, got {override!r}")
            register_topology(Topology.from_dict(str(name), spec), source=source, override=override)
        for name, spec in necks.items():
            if not isinstance(spec, Mapping) or "family" not in spec:
                raise ValueError(f"{source}: neck {name!r} needs a mapping with at least a 'family'")
            unknown = set(spec) - _VARIANT_KEYS
            if unknown:
                raise ValueError(f"{source}: neck {name!r} has unknown keys {sorted(unknown)}")
            register_variant(
                str(name), spec["family"], spec.get("args"), summary=spec.get("summary", ""),
                paper=spec.get("paper", ""), tags=spec.get("tags", ()), source=source,
                override=spec.get("override", False),
            )


@contextlib.contextmanager
def _transaction() -> Iterator[None]:
    """Register under the lock; if anything raises, restore everything registered as it was."""
    with _lock:
        saved = (dict(_state.families), dict(_state.variants), dict(_state.topologies), dict(_state.failed))
        try:
            yield
        except BaseException:
            _state.families, _state.variants, _state.topologies, _state.failed = saved
            raise


def registry_path() -> Path:
    """Where the built-in ``registry.yaml`` is: inside the installed package, or at the repository root."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "registry.yaml", here.parent / "registry.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"registry.yaml is neither in {here} nor in {here.parent}: the install is broken")


class DuplicateKeyError(yaml.constructor.ConstructorError, ValueError):
    """A key given twice in one YAML mapping (a ``ValueError`` as well as a ``yaml.YAMLError``)."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (plain YAML keeps the last silently,
    so a variant pasted twice under one name would quietly lose its first definition).

    Merge keys (``<<: *common``) work as YAML says: a key brought in by a merge is not a duplicate, and a key
    written in the mapping itself overrides the merged one.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise DuplicateKeyError(
                        "while reading a mapping", node.start_mark,
                        f"found {key!r} twice (lines {seen[key].line + 1} and {key_node.start_mark.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
            self.flatten_mapping(node)  # expands the merges: merged pairs first, so explicit keys win
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Union[str, os.PathLike]) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_StrictLoader)


# ------------------------------------------------------------------------------------------ loading


def _plugin_document(obj: Any) -> Any:
    if isinstance(obj, types.ModuleType):
        obj = getattr(obj, "NECK_VARIANTS", None)
    elif callable(obj):
        obj = obj()
    if isinstance(obj, (str, os.PathLike)):
        return _read_yaml(obj)
    return obj


def _defined_names(doc: Any) -> List[str]:
    """The neck and topology names a (possibly invalid) registry document defines."""
    names: List[str] = []
    if isinstance(doc, Mapping):
        for section in ("necks", "topologies"):
            if isinstance(doc.get(section), Mapping):
                names += [str(n) for n in doc[section]]
    return names


def _warn_about_plugin(ep: Any, source: str, error: BaseException) -> None:
    """Warn that a plugin was skipped, located at the plugin's own code (its deepest frame, else its module)."""
    module = getattr(ep, "module", None) or str(getattr(ep, "value", "")).split(":")[0]
    filename, lineno = f"<plugin {getattr(ep, 'name', '?')}>", 1
    try:
        import importlib.util

        spec = importlib.util.find_spec(module) if module else None
        if spec is not None and spec.origin:
            filename = spec.origin
    except (ImportError, ValueError):
        pass
    for frame in traceback.extract_tb(error.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(filename):
            lineno = frame.lineno or 1
    warnings.warn_explicit(f"fpn_zoo: skipped {source}: {type(error).__name__}: {error}", RuntimeWarning,
                           filename, lineno, module=module or None)


def _load_plugin(ep: Any) -> None:
    """Load one entry point all or nothing: on any error, nothing it registered stays, and its names are
    remembered so that asking for one says which plugin failed."""
    dist = getattr(ep, "dist", None)
    origin = f" from {dist.name} {dist.version}" if dist is not None else ""
    source = f"plugin {ep.name!r} ({ep.value}{origin})"
    before = set(_state.families)
    doc = None
    try:
        with _transaction():
            try:
                doc = _plugin_document(ep.load())
                _add_document(doc, source)
            finally:
                added_families = set(_state.families) - before
    except Exception as e:  # a broken plugin must not take the registry down
        reason = f"{source} failed to load ({type(e).__name__}: {' '.join(str(e).split())})"
        for name in _defined_names(doc) + sorted(added_families):
            if name not in _state.variants and name not in _state.topologies and name not in _state.families:
                _state.failed[name] = reason
        _warn_about_plugin(ep, source, e)


def _ensure_loaded() -> None:
    """Read ``registry.yaml`` and the plugins once, on first use, safely across threads.

    Other threads wait until loading is done; calls from the loading thread itself (a plugin asking the
    registry while it loads) see the registry as loaded so far. If loading fails, the error propagates, the
    registry is as it was before, and the next call tries again.
    """
    if _state.status == LOADED:
        return
    with _lock:
        if _state.status != UNLOADED:  # LOADED meanwhile, or LOADING: a re-entrant call from this thread
            return
        _state.status = LOADING
        try:
            with _transaction():
                _add_document(_read_yaml(registry_path()), BUILTIN)
                for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
                    _load_plugin(ep)
        except BaseException:
            _state.status = UNLOADED
            raise
        _state.status = LOADED


def list_necks(
    filter: Union[str, Sequence[str]] = "",
    exclude_filters: Union[str, Sequence[str]] = (),
    *,
    family: Optional[str] = None,
    tag: Optional[str] = None,
) -> List[str]:
    """Names of the registered variants, naturally sorted.

    Args:
        filter: fnmatch pattern(s) to keep (``"*pan*"``); empty keeps all.
        exclude_filters: fnmatch pattern(s) to drop.
        family: keep only variants of this family.
        tag: keep only variants carrying this tag (``"yolo"``, ``"two-stage"``; see ``docs/index.md``).
    """
    _ensure_loaded()
    names = list(_state.variants)
    includes = [filter] if isinstance(filter, str) else list(filter)
    includes = [p for p in includes if p]
    if includes:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in includes)]
    excludes = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    names = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in excludes)]
    if family is not None:
        names = [n for n in names if _state.variants[n].family == family]
    if tag is not None:
        names = [n for n in names if tag in _state.variants[n].tags]
    return sorted(names, key=_natural_key)


def is_neck(name: str) -> bool:
    _ensure_loaded()
    return name in _state.variants


def neck_cfg(name: Any) -> NeckCfg:
    """The variant ``name`` with its arguments merged over the family's defaults.

    ``name`` may also be a neck built by :func:`fpn_zoo.create_neck`: its config (with every override it
    was built with) is returned, and ``create_neck(cfg.name, features, **cfg.args)`` rebuilds it.

    Raises:
        ValueError: unknown name, with close matches.
    """
    built = getattr(name, "neck_cfg", None)
    if isinstance(built, NeckCfg):
        return built
    if not isinstance(name, str):
        raise TypeError(f"neck_cfg takes a neck name or a neck built by create_neck, got {type(name).__name__}")
    _ensure_loaded()
    try:
        cfg = _state.variants[name]
    except KeyError:
        raise _unknown("neck", name, _state.variants) from None
    defaults = {k: v for k, v in family_args(cfg.family).items() if v is not inspect.Parameter.empty}
    return replace(cfg, args={**defaults, **cfg.args})
