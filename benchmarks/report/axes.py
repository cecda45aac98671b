"""The missing-data axes of a record (imputation, missingness mechanism) as the reports see them.

Every caption names both (``axes_caption``). The paper-layout tables (Table 1/2, levels,
ratios, retrieval) show one imputation and one mechanism per model and dataset
(``primary_records``): the default (``mean``, ``uniform``) where it ran, else the only one
present; the imputation sweep has its own tables (``benchmarks.report.imputation``).
"""
from __future__ import annotations

DEFAULT_IMPUTATION = "mean"
DEFAULT_MECHANISM = "uniform"
MECHANISM_TEXT = {"uniform": "uniform (the paper's stratified draw)",
                  "popularity": "popularity (rarely interacted items miss modalities more often)",
                  "per_modality": "per modality", "test_only": "test_only (complete features in training, masked at test)"}


def imputation_of(rec: dict) -> str:
    axes = rec.get("missing_axes") or {}
    if axes.get("imputation"):
        return str(axes["imputation"])
    cfg = rec.get("config") or {}
    v = cfg.get("missing_imputation", DEFAULT_IMPUTATION)
    return {0: "zero", 1: "mean", "0": "zero", "1": "mean"}.get(v, str(v))


def mechanism_of(rec: dict) -> str:
    axes = rec.get("missing_axes") or {}
    if axes.get("mechanism"):
        return str(axes["mechanism"])
    cfg = rec.get("config") or {}
    if cfg.get("missing_mechanism"):
        return str(cfg["missing_mechanism"])
    return "per_modality" if cfg.get("missing_ratio_per_modality") else DEFAULT_MECHANISM


def mechanism_label(rec: dict) -> str:
    mech = mechanism_of(rec)
    if mech == "per_modality":
        per = (rec.get("config") or {}).get("missing_ratio_per_modality") or {}
        return "per modality (" + ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                            for k, v in per.items()) + ")"
    return MECHANISM_TEXT.get(mech, mech)


def uses_features(rec: dict) -> bool:
    """Whether the record's model was given features (collaborative models have no imputation)."""
    axes = rec.get("missing_axes")
    if axes is not None:
        return bool(axes.get("filled_rows"))
    return rec.get("group") != "collaborative"


def axes_caption(records: list[dict]) -> str:
    """"Imputation: mean. Missingness: uniform (...)." over the records given."""
    if not records:
        return ""
    imps = sorted({imputation_of(r) for r in records if uses_features(r)})
    mechs = list(dict.fromkeys(mechanism_label(r) for r in records))
    imp_txt = ", ".join(imps) if imps else "none (no model of these cells uses features)"
    return f"Imputation of masked features: {imp_txt}. Missingness mechanism: {'; '.join(mechs)}."


def primary_records(records: list[dict]) -> tuple[list[dict], list[str]]:
    """The records of one imputation and one mechanism per (model, dataset); notes on what was left out."""
    by: dict[tuple, dict[tuple, list[dict]]] = {}
    for r in records:
        key = (r.get("model"), r.get("dataset"), r.get("protocol"))
        by.setdefault(key, {}).setdefault((mechanism_of(r), imputation_of(r)), []).append(r)
    out, notes = [], []
    for key, variants in by.items():
        if len(variants) == 1:
            out.extend(next(iter(variants.values())))
            continue
        ranked = sorted(variants, key=lambda v: (v[0] != DEFAULT_MECHANISM, v[1] != DEFAULT_IMPUTATION, v))
        out.extend(variants[ranked[0]])
        others = ", ".join(f"{m}/{i}" for m, i in ranked[1:])
        notes.append(f"{key[0]} on {key[1]}: the paper-layout tables show mechanism/imputation "
                     f"{ranked[0][0]}/{ranked[0][1]}; also in the store: {others} (see the imputation tables)")
    return out, notes


def axes_short(records: list[dict]) -> str:
    """"imputation mean, mechanism popularity": the axes in a figure title."""
    imps = sorted({imputation_of(r) for r in records if uses_features(r)})
    mechs = sorted({mechanism_of(r) for r in records})
    parts = ([f"imputation {'/'.join(imps)}"] if imps else []) + [f"mechanism {'/'.join(mechs)}"]
    return ", ".join(parts)
