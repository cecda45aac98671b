"""Layered YAML configuration and grid expansion.

Layers, later wins: ``configs/overall.yaml`` -> ``configs/datasets/<kind>.yaml`` -> the
model's ``defaults`` -> the model's ``best[<kind>]`` (the official per-dataset best values)
-> ``configs/quick.yaml`` with ``--quick`` -> ``--set key=value``. The resolved setting is
stored with every result.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import yaml

from benchmarks.run.devices import DEVICE_FORMS, is_device_request

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


# --------------------------------------------------------------------------- value checks

def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# Global keys: (what a value must be, test). A value is checked for every resolved setting of
# every selected model before any job starts, so a typo in a value fails in the first second.
_RULES = {
    "an integer >= 1": lambda x: _integer(x) and x >= 1,
    "an integer >= 0": lambda x: _integer(x) and x >= 0,
    "a number > 0": lambda x: _number(x) and x > 0,
    "a number >= 0": lambda x: _number(x) and x >= 0,
    "a number in [0, 1]": lambda x: _number(x) and 0 <= x <= 1,
    "true or false": lambda x: isinstance(x, bool),
    "a string": lambda x: isinstance(x, str),
    "null or an integer >= 1": lambda x: x is None or (_integer(x) and x >= 1),
    "null or a number > 0": lambda x: x is None or (_number(x) and x > 0),
    "'auto' or a number in [0, 1)": lambda x: x == "auto" or x is None or (_number(x) and 0 <= x < 1),
    "a list of numbers in [0, 1)": lambda x: isinstance(x, list) and all(_number(v) and 0 <= v < 1 for v in x),
    "a list of integers >= 1": lambda x: isinstance(x, list) and len(x) > 0 and all(_integer(v) and v >= 1 for v in x),
    "a non-empty list of metric names": lambda x: isinstance(x, list) and len(x) > 0 and all(isinstance(v, str) for v in x),
    "[gamma > 0, step > 0]": lambda x: x is None or (isinstance(x, list) and len(x) == 2
                                                      and all(_number(v) and v > 0 for v in x)),
    DEVICE_FORMS: lambda x: isinstance(x, str) and is_device_request(x),
}
GLOBAL_RULES = {
    "embedding_size": "an integer >= 1", "learning_rate": "a number > 0", "weight_decay": "a number >= 0",
    "learning_rate_scheduler": "[gamma > 0, step > 0]", "train_batch_size": "an integer >= 1",
    "eval_batch_size": "an integer >= 1", "epochs": "an integer >= 1", "eval_step": "an integer >= 1",
    "stopping_step": "an integer >= 0", "valid_metric": "a string", "metrics": "a non-empty list of metric names",
    "topk": "a list of integers >= 1", "missing_ratio": "'auto' or a number in [0, 1)",
    "missing_ratio_sweep": "a list of numbers in [0, 1)", "device": DEVICE_FORMS,
    "fix_reference_defects": "true or false", "deterministic": "true or false",
    "max_batches_per_epoch": "null or an integer >= 1", "grid_limit": "null or an integer >= 1",
    "resources_cpus": "a number > 0", "resources_gpus": "a number >= 0", "resources_memory_mb": "null or a number > 0",
}


_COUNT_KEY = re.compile(r"(^n_|_layers?$|^layer_num$|_num$|_k$|_topk$|_steps$|_batch$|_size$|_dim$|_hidden$|"
                        r"_every$|_embedding$|_common$|^n_prototypes$)")


def model_rule(key: str, default) -> str | None:
    """What a model's own key must hold, from its default value (the model YAML is the schema):
    booleans stay booleans and strings strings; counts (layers, neighbours, sizes, steps) are
    integers >= 0; other numbers are >= 0, rates and dropouts lie in [0, 1] and temperatures
    are > 0."""
    if isinstance(default, list) and default and not isinstance(default[0], list):
        default = default[0]  # a grid: every value must fit the element rule
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, str):
        return "a string"
    if _number(default):
        if _COUNT_KEY.search(key):
            return "an integer >= 0"
        if "temp" in key:
            return "a number > 0"
        if "dropout" in key or key.endswith("_rate"):
            return "a number in [0, 1]"
        return "a number >= 0"
    return None



def check_values(cfg: dict, model_defaults: dict, sets: dict, where: str) -> None:
    """Every known key of a resolved configuration (grid values one by one) against its rule;
    the error names the key, where its value came from and what it must be."""
    for key, value in cfg.items():
        rule = GLOBAL_RULES.get(key)
        if rule is None and key in model_defaults:
            rule = model_rule(key, model_defaults[key])
        if rule is None:
            continue
        whole = rule.startswith(("a list", "a non-empty list", "["))  # the rule is about the list itself
        values = [value]
        if isinstance(value, list) and not whole:  # a grid, or a list-valued parameter: each element
            values = [x for v in value for x in (v if isinstance(v, list) else [v])]
        for v in values:
            if not _RULES[rule](v):
                source = f"--set {key}={sets[key]!r}" if key in sets else f"configuration key {key!r} ({where})"
                raise ConfigError(f"{source}: {key} must be {rule}, got {v!r}")
