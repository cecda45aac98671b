"""The model registry: every recommender registers itself under its paper name.

Registration is by decorator (``@register("LightGCN")``), with the configuration read from
``configs/<Name>.yaml`` beside the defining module. The registry holds what has been registered
and nothing else: which packages to import so that their models register is the run layer's
business (``benchmarks.run.discovery``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# "non-personalised" holds the sanity floor (ItemPop) that every table reports beside the models.
GROUPS = ("non-personalised", "collaborative", "multi-modal", "missing-modality-aware", "proposed")
_REGISTRY: dict[str, "ModelEntry"] = {}


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class ModelEntry:
    name: str
    cls: type
    defaults: dict = field(default_factory=dict)  # model defaults (may hold grids)
    best: dict = field(default_factory=dict)  # dataset kind -> best values

    @property
    def group(self) -> str:
        return self.cls.group


def _read_model_yaml(path: Path) -> tuple[dict, dict]:
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict) or set(doc) - {"defaults", "best"}:
        raise ValueError(f"{path}: a model config has two sections, 'defaults' and 'best' "
                         f"(per dataset); found {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    defaults = doc.get("defaults") or {}
    best = doc.get("best") or {}
    if not isinstance(defaults, dict) or not isinstance(best, dict) or \
            not all(isinstance(v, dict) for v in best.values()):
        raise ValueError(f"{path}: 'defaults' must be a mapping and 'best' a mapping of dataset -> mapping")
    return defaults, best


def register(name: str | None = None, *, defaults: dict | None = None, best: dict | None = None):
    """Class decorator: ``@register("LightGCN")``.

    The configuration comes from ``configs/<name>.yaml`` next to the module defining the class,
    else from the ``defaults``/``best`` arguments.
    """

    def wrap(cls):
        model_name = name or cls.__name__
        group = getattr(cls, "group", None)
        if group not in GROUPS:
            raise ValueError(f"model {model_name}: class attribute group={group!r} must be one of {GROUPS}")
        if model_name in _REGISTRY and _REGISTRY[model_name].cls is not cls:
            existing = _REGISTRY[model_name].cls
            if f"{existing.__module__}.{existing.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
                raise ValueError(f"model name {model_name!r} is already registered by "
                                 f"{existing.__module__}.{existing.__qualname__}")
        path = None
        module_file = getattr(importlib.import_module(cls.__module__), "__file__", None)
        if module_file:
            candidate = Path(module_file).parent / "configs" / f"{model_name}.yaml"
            path = candidate if candidate.is_file() else None
        d, b = _read_model_yaml(path) if path is not None else (dict(defaults or {}), dict(best or {}))
        cls.model_name = model_name
        _REGISTRY[model_name] = ModelEntry(model_name, cls, d, b)
        return cls

    return wrap


def get(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        lower = {k.lower(): k for k in _REGISTRY}
        hint = f" (did you mean {lower[name.lower()]}?)" if name.lower() in lower else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; known models: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered names by group (in the order of ``GROUPS``), then by name."""
    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(_REGISTRY, key=lambda n: (order[_REGISTRY[n].cls.group], n.lower(), n))


def entries() -> list[ModelEntry]:
    return [_REGISTRY[n] for n in names()]
