"""Finding the models: import every module of the model packages so that their ``@register``
decorators run, then answer from the registry.

The registry (``models.registry``) knows only what has been registered; the run layer decides
which packages hold models. The planner, every job (also in a worker process or a Ray task), the
Python entry point and the tests go through here. A model registered anywhere else (a test, a
notebook) is found as well, as long as its module was imported first.
"""
from __future__ import annotations

import importlib
import pkgutil

from models import registry

MODEL_PACKAGES = ("models", "baselines")
_imported: set[str] = set()


def discover(packages: tuple[str, ...] = MODEL_PACKAGES) -> None:
    """Import every public module of each package once."""
    for pkg_name in packages:
        if pkg_name in _imported:
            continue
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg_name}.{info.name}")
        _imported.add(pkg_name)


def registry_entry(name: str) -> registry.ModelEntry:
    """The registered model ``name`` (an UnknownModelError lists the known ones)."""
    discover()
    return registry.get(name)


def model_names() -> list[str]:
    """Every registered model, by group, then by name."""
    discover()
    return registry.names()


def model_entries() -> list[registry.ModelEntry]:
    discover()
    return registry.entries()
