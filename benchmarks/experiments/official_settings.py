"""The settings an official run trains with, so that one run covers exactly one setting.

The official code treats a list-valued key named in ``hyper_parameters`` as a grid and trains
every combination. A fidelity run needs one setting, the one ours trains:

* DGMRec release (as its ``run.sh``): ``src/configs/best/<Model>_<dataset>.json`` as the
  override, ``{}`` where there is none; missing ratio 0.666 on the Amazon datasets and 0.6 on
  TikTok; mean imputation. A grid the best file leaves with several values is pinned.
* MMRec: no masks, no audio (every feature present, ratio 0). Its model YAML holds grids
  with no best file; every ``hyper_parameters`` key is pinned, and the pinned YAML replaces the
  model's YAML in the private copy. MMRec's own schedule (``overall.yaml``) applies.

A key is pinned to the value given with ``--set key=value``, else to our resolved value of the
model on that dataset (under our name for the setting, ``weight_maps.SETTING_NAMES``), else to
the official value when its list holds one value; a grid with several values and none of these
is refused, as is a ``--set`` key the official model does not have.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.experiments.official_checkout import DGMREC, MMREC, official_yaml
from benchmarks.experiments.weight_maps import SETTING_NAMES, our_name

NOT_PINNED = ("seed", "missing_imputation")  # set per run by the caller, not a setting of the model
# The training schedule: ours runs with the official values of these keys in a comparison.
SCHEDULE_KEYS = ("epochs", "eval_step", "stopping_step", "learning_rate_scheduler", "train_batch_size")
MEAN_IMPUTATION = 1  # the DGMRec release's code for mean imputation (0 zero, 2 nearest neighbour)


class SettingError(ValueError):
    pass


def release_ratio(dataset: str) -> float:
    """The DGMRec release's missing ratio (its run.sh): 0.6 on TikTok, 0.666 on the Amazon datasets."""
    return 0.6 if dataset == "tiktok" else 0.666


def best_file(src: Path, model: str, dataset: str) -> Path:
    return Path(src) / "configs" / "best" / f"{model}_{dataset}.json"


def best_override(src: Path, model: str, dataset: str) -> dict:
    """The DGMRec release's best settings of ``model`` on ``dataset``; ``{}`` without a file."""
    path = best_file(src, model, dataset)
    return json.loads(path.read_text()) if path.is_file() else {}


def layered_config(src: Path, model: str, dataset: str, codebase: str, on_top: dict | None = None) -> dict:
    """The official configuration as its configurator merges it: ``overall.yaml``, the dataset's
    and the model's YAML, then ``on_top`` (what main.py passes). MMRec concatenates the
    ``hyper_parameters`` of the files; the DGMRec release lets the last one win."""
    cfg, grid = {}, []
    configs = Path(src) / "configs"
    for path in (configs / "overall.yaml", configs / "dataset" / f"{dataset}.yaml", configs / "model" / f"{model}.yaml"):
        doc = official_yaml(path)
        grid += doc.get("hyper_parameters") or []
        cfg.update(doc)
    if codebase == MMREC:
        cfg["hyper_parameters"] = grid
    cfg.update(on_top or {})
    return cfg


def our_settings(codebase: str, model: str, dataset: str) -> dict:
    """Our resolved configuration of the official ``model`` on ``dataset``, with each setting
    also under its official name; empty when we have no such model."""
    from benchmarks.run.config import resolve
    from benchmarks.run.discovery import registry_entry
    from models.registry import UnknownModelError
    try:
        entry = registry_entry(our_name(codebase, model))
    except UnknownModelError:
        return {}
    cfg = resolve(entry, dataset)
    for official, ours in SETTING_NAMES.get((codebase, model), {}).items():
        if ours in cfg:
            cfg[official] = cfg[ours]
    return cfg


def ours_from_official(codebase: str, model: str, values: dict) -> dict:
    """Official settings as ``--set`` values of ours: each under our name for it, for the keys
    our model (or every model: the suite's global keys) has."""
    from benchmarks.run.config import overall
    from benchmarks.run.discovery import registry_entry
    from models.registry import UnknownModelError
    try:
        entry = registry_entry(our_name(codebase, model))
    except UnknownModelError:
        return {}
    known = set(overall()) | set(entry.defaults) | {k for best in entry.best.values() for k in best}
    names = SETTING_NAMES.get((codebase, model), {})
    return {names.get(k, k): v for k, v in values.items() if names.get(k, k) in known}


def pin(model: str, keys, official: dict, ours: dict, sets: dict, figure: dict | None = None) -> dict[str, tuple]:
    """Each grid key -> (its one value, where the value comes from): ``sets``, else the
    setting of a published official figure (``figure``), else ours, else the official value
    where its list holds one."""
    out = {}
    for k in keys:
        if k in sets:
            out[k] = (sets[k], "--set")
            continue
        if k in (figure or {}):
            out[k] = (figure[k], "official figure")
            continue
        if k in ours:
            v = ours[k]
            if isinstance(v, list) and len(v) != 1:
                raise SettingError(f"{model}: {k} is a grid in our configuration too ({v}); give --set {k}=VALUE")
            out[k] = (v[0] if isinstance(v, list) else v, "ours")
            continue
        values = official.get(k)
        values = values if isinstance(values, list) else [values]
        if len(values) != 1:
            raise SettingError(f"{model}: official grid {k}={values} and no value of ours for it; "
                               f"give --set {k}=VALUE")
        out[k] = (values[0], "official (one value)")
    return out


def check_sets(model: str, sets: dict, official: dict) -> None:
    unknown = sorted(k for k in sets if k not in official)
    if unknown:
        raise SettingError(f"{model}: the official model has no setting {', '.join(unknown)} "
                           f"(its keys: {', '.join(sorted(k for k in official if k != 'hyper_parameters'))})")


def _grid_keys(cfg: dict) -> list[str]:
    return [k for k in dict.fromkeys(cfg.get("hyper_parameters") or []) if k not in NOT_PINNED]


def _apply(doc: dict, pinned: dict, sets: dict, grid: list[str]) -> dict:
    doc = dict(doc)
    doc.update({k: [v] for k, (v, _) in pinned.items()})
    doc.update({k: ([v] if k in grid else v) for k, v in sets.items() if k not in pinned})
    return doc


def release_override(src: Path, model: str, dataset: str, ours: dict, sets: dict, epochs: int,
                     figure: dict | None = None) -> tuple[dict, dict]:
    """(the DGMRec release's ``--config_override``, the pinned keys with where each came from):
    the best file, each grid it leaves with several values pinned, ``sets``, ``epochs``."""
    override = best_override(src, model, dataset)
    cfg = layered_config(src, model, dataset, DGMREC, override)
    check_sets(model, sets, cfg)
    grid = _grid_keys(cfg)
    several = [k for k in grid if k not in sets and isinstance(cfg.get(k), list) and len(cfg[k]) > 1]
    pinned = pin(model, several, cfg, ours, {}, figure)
    pinned.update({k: (v, "--set") for k, v in sets.items() if k in grid})
    override = _apply(override, pinned, sets, grid)
    override["epochs"] = int(epochs)
    return override, {k: where for k, (_, where) in pinned.items()}


def mmrec_model_yaml(src: Path, model: str, dataset: str, ours: dict, sets: dict, epochs: int) -> tuple[dict, dict]:
    """(MMRec's model YAML with every grid key pinned, ``sets`` and ``epochs``; the pinned keys
    with where each came from). The seed and the device are added per run."""
    spec = official_yaml(Path(src) / "configs" / "model" / f"{model}.yaml")
    if not spec:
        raise SettingError(f"{model}: no configs/model/{model}.yaml in the MMRec checkout")
    cfg = layered_config(src, model, dataset, MMREC)
    check_sets(model, sets, cfg)
    grid = _grid_keys(spec)
    pinned = pin(model, grid, cfg, ours, sets)
    doc = _apply(spec, pinned, sets, grid)
    doc["epochs"] = int(epochs)
    return doc, {k: where for k, (_, where) in pinned.items()}


def effective(src: Path, model: str, dataset: str, codebase: str, override: dict) -> tuple[dict, dict]:
    """(the schedule, the model's settings) an official run trains with: the schedule keys of
    the merged configuration, and every key of the model's YAML and of the override with each
    one-value grid as its value."""
    if codebase == MMREC:
        cfg = layered_config(src, model, dataset, MMREC)
        cfg.update(override)  # the pinned YAML replaces the model's
        own = dict(override)
    else:
        cfg = layered_config(src, model, dataset, DGMREC, override)
        own = dict(official_yaml(Path(src) / "configs" / "model" / f"{model}.yaml"), **override)
    schedule = {k: cfg[k] for k in SCHEDULE_KEYS if k in cfg}
    settings = {k: (v[0] if isinstance(v, list) and len(v) == 1 and k in _grid_keys(cfg) else v)
                for k, v in own.items() if k not in ("hyper_parameters", *NOT_PINNED, *SCHEDULE_KEYS)}
    return schedule, settings


def ensure_mmrec_dataset_yaml(configs: Path, dataset: str) -> None:
    """Write the dataset YAML of a folder MMRec has none for into the private copy's ``configs``
    (its fields as in MMRec's own dataset YAMLs; audio is not one of MMRec's inputs)."""
    import yaml
    path = Path(configs) / "dataset" / f"{dataset}.yaml"
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "TIME_FIELD": "timestamp",
        "filter_out_cod_start_users": True, "inter_file_name": f"{dataset}.inter",
        "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy",
        "user_graph_dict_file": "user_graph_dict.npy", "field_separator": "\t"}))
