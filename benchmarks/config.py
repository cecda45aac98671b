"""Layered YAML configuration and grid expansion.

Layers, later wins: ``configs/overall.yaml`` -> ``configs/datasets/<kind>.yaml`` -> the
model's ``defaults`` -> the model's ``best[<kind>]`` (the official per-dataset best values)
-> ``configs/quick.yaml`` with ``--quick`` -> ``--set key=value``. The resolved setting is
stored with every result.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    pass


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value")
    return doc


def overall() -> dict:
    return _load_yaml(CONFIG_DIR / "overall.yaml")


def dataset_layer(kind: str) -> dict:
    return _load_yaml(CONFIG_DIR / "datasets" / f"{kind}.yaml")


def quick_layer() -> dict:
    return _load_yaml(CONFIG_DIR / "quick.yaml")


def parse_sets(items: list[str] | None) -> dict:
    """``["a=1", "b=[1, 2]"]`` -> ``{"a": 1, "b": [1, 2]}`` (values parsed as YAML)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return out


def resolve(entry, kind: str, sets: dict | None = None, quick: bool = False) -> dict:
    """The merged configuration of a registered model on a dataset kind (may hold grids)."""
    cfg = overall()
    cfg.update(dataset_layer(kind))
    cfg.update(entry.defaults)
    cfg.update(entry.best.get(kind, {}))
    if quick:
        cfg.update(quick_layer())
    sets = dict(sets or {})
    known = {k: v for k, v in sets.items() if k in cfg}
    cfg.update(known)
    if cfg.get("fix_reference_defects"):
        for key in list(cfg):
            if key.startswith("fix_") and key not in known:
                cfg[key] = True
    return cfg


def check_sets(sets: dict, entries) -> None:
    """Every --set key must be known to at least one selected model (typos fail loudly)."""
    known = set(overall())
    for e in entries:
        known |= set(e.defaults)
        for b in e.best.values():
            known |= set(b)
    unknown = sorted(k for k in sets if k not in known)
    if unknown:
        raise ConfigError(f"unknown configuration key(s) {unknown} for the selected models; known keys: "
                          f"{', '.join(sorted(known))}")


# Keys whose list values are one value, added after ``list_keys`` of overall.yaml became part of
# every job's identity (extending that list would have changed every job id).
SUITE_LIST_KEYS = ("imputation_sweep",)


def expand_grid(cfg: dict, list_params=()) -> list[dict]:
    """One flat setting per point of the grid of list-valued keys."""
    scalar_lists = set(cfg.get("list_keys", [])) | set(list_params) | set(SUITE_LIST_KEYS)
    grid_keys = sorted(k for k, v in cfg.items() if isinstance(v, list) and k not in scalar_lists)
    if not grid_keys:
        return [dict(cfg, grid_keys=[])]
    settings = []
    for values in itertools.product(*(cfg[k] for k in grid_keys)):
        s = dict(cfg)
        s.update(dict(zip(grid_keys, values)))
        s["grid_keys"] = grid_keys
        settings.append(s)
    return settings
