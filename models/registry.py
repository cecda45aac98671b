"""The model registry: every recommender registers itself under its paper name.

Registration is by decorator; discovery imports every module of the ``models`` and
``baselines`` packages once, so adding a baseline is one file (the class) plus one YAML
file beside it in ``configs/<Name>.yaml``. A class defined anywhere else (a test, a
notebook, a plugin package) can register itself the same way and runs through the
whole runner.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# "non-personalised" holds the sanity floor (ItemPop) that every table reports beside the models.
GROUPS = ("non-personalised", "collaborative", "multi-modal", "missing-modality-aware", "proposed")
# The paper's row order; models not listed sort after these, alphabetically, within their group.
PAPER_ORDER = ("ItemPop", "MFBPR", "NGCF", "LightGCN", "SGL", "SimGCL", "VBPR", "MMGCN", "GRCN", "SLMRec", "BM3",
               "LATTICE", "MGCN", "LGMRec", "DAMRS", "GUME", "CI2MG", "MILK", "SIBRAR", "DGMRec")
_REGISTRY: dict[str, "ModelEntry"] = {}
_DISCOVERED = False
_PACKAGES = ("models", "baselines")


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class ModelEntry:
    name: str
    cls: type
    defaults: dict = field(default_factory=dict)  # model defaults (may hold grids)
    best: dict = field(default_factory=dict)  # dataset kind -> best values
    config_source: str = "<inline>"

    @property
    def group(self) -> str:
        return self.cls.group


def _read_model_yaml(path: Path, name: str) -> tuple[dict, dict]:
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


def register(name: str | None = None, *, defaults: dict | None = None, best: dict | None = None,
             config_file: str | Path | None = None):
    """Class decorator: ``@register("LightGCN")``.

    The configuration comes from ``config_file``, else from ``configs/<name>.yaml`` next to
    the module defining the class, else from the ``defaults``/``best`` arguments.
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
        path = Path(config_file) if config_file else None
        if path is None:
            module = importlib.import_module(cls.__module__)
            module_file = getattr(module, "__file__", None)
            if module_file:
                candidate = Path(module_file).parent / "configs" / f"{model_name}.yaml"
                path = candidate if candidate.is_file() else None
        if path is not None:
            d, b = _read_model_yaml(path, model_name)
            source = str(path)
        else:
            d, b, source = dict(defaults or {}), dict(best or {}), "<inline>"
        cls.model_name = model_name
        _REGISTRY[model_name] = ModelEntry(model_name, cls, d, b, source)
        return cls

    return wrap


def discover() -> None:
    """Import every module of the model packages so their decorators run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for pkg_name in _PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_") and info.name not in ("registry", "base", "blocks"):
                importlib.import_module(f"{pkg_name}.{info.name}")


def get(name: str) -> ModelEntry:
    discover()
    if name not in _REGISTRY:
        lower = {k.lower(): k for k in _REGISTRY}
        hint = f" (did you mean {lower[name.lower()]}?)" if name.lower() in lower else ""
        raise UnknownModelError(f"unknown model {name!r}{hint}; known models: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Registered names, grouped in the paper's order."""
    discover()
    order = {g: i for i, g in enumerate(GROUPS)}
    rank = {n: i for i, n in enumerate(PAPER_ORDER)}
    return sorted(_REGISTRY, key=lambda n: (order[_REGISTRY[n].cls.group], rank.get(n, len(rank)), n.lower()))


def entries() -> list[ModelEntry]:
    return [_REGISTRY[n] for n in names()]
