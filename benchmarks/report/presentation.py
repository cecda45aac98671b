"""How the reports name, order and draw models, datasets and metrics: the one place for every
presentation constant of the report layer.

Rows follow the registry's groups in their order (``models.registry.GROUPS``), then the paper's
order within a group, then the name. The proposed model of a table is the model whose group is
``"proposed"`` (every record carries the group the registry gave its model); the group
``"non-personalised"`` holds the floor (ItemPop) that every table shows but no Improv. row
compares with.
"""
from __future__ import annotations

import hashlib

from models.registry import GROUPS

PROPOSED_GROUP = "proposed"
FLOOR_GROUP = "non-personalised"
# The paper's row order; a model not listed sorts after these, by name, within its group.
PAPER_ORDER = ("ItemPop", "MFBPR", "NGCF", "LightGCN", "SGL", "SimGCL", "VBPR", "MMGCN", "GRCN", "SLMRec", "BM3",
               "LATTICE", "MGCN", "LGMRec", "DAMRS", "GUME", "CI2MG", "MILK", "SIBRAR", "DGMRec")
# Models published after the paper, in publication order; all multi-modal, so within that group
# they follow the paper's multi-modal baselines.
POST_PAPER_ORDER = ("FREEDOM", "DRAGON", "PGL", "SMORE", "MMGCF")

DATASET_ORDER = ("baby", "sports", "clothing", "tiktok", "elec")
TABLE_METRICS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50")  # Table 1 / Table 2 and their companions
LEVEL_METRICS = ("recall@20", "ndcg@20")  # the per-level, per-ratio, per-group and imputation tables
SHORT_METRIC = {"recall": "R", "ndcg": "N", "precision": "P", "map": "MAP"}  # tables: R@20
METRIC_LABELS = {"recall": "Recall", "ndcg": "NDCG", "precision": "Precision", "map": "MAP"}  # figures: Recall@20
SOURCE_TEXT = {"real": "real data", "reference": "reference data (surrogate features)",
               "synthetic": "SYNTHETIC replica"}

# Figures: one colour per model wherever it appears. The proposed group is red (drawn on top and
# thicker); collaborative models in greys/browns, multi-modal models in the tab10 hues (light and
# dark of each), missing-modality-aware models in dark tones; a model not listed takes a colour of
# the fallback palette by a stable hash of its name (md5: the same in every process).
PROPOSED_COLOR = "#d62728"
MODEL_COLORS = {
    "ItemPop": "#bdbdbd",
    "MFBPR": "#7f7f7f", "NGCF": "#4d4d4d", "LightGCN": "#8c564b", "SGL": "#c49c94", "SimGCL": "#bcbd22",
    "VBPR": "#1f77b4", "MMGCN": "#7fb2e0", "GRCN": "#ff7f0e", "SLMRec": "#f5b041", "BM3": "#2ca02c",
    "LATTICE": "#82c96f", "MGCN": "#9467bd", "LGMRec": "#c3a3e0", "DAMRS": "#17becf", "GUME": "#e377c2",
    "FREEDOM": "#98df8a", "DRAGON": "#aec7e8", "PGL": "#ffbb78", "SMORE": "#f7b6d2", "MMGCF": "#9edae5",
    "CI2MG": "#393b79", "MILK": "#637939", "SIBRAR": "#843c39",
}
FALLBACK_PALETTE = ("#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#b5cf6b",
                    "#e7ba52", "#d6616b", "#ce6dbd", "#3182bd", "#e6550d", "#31a354", "#756bb1")
# The marker says the model's group.
GROUP_MARKERS = {"non-personalised": "D", "collaborative": "s", "multi-modal": "o", "missing-modality-aware": "^",
                 "proposed": "*"}
GROUP_LABELS = {"missing-modality-aware": "missing-aware"}  # shorter names in legends and bar groups


def model_order(pairs) -> list[tuple[str, str]]:
    """Distinct (model, group) pairs in row order: group (registry order), paper order (then the
    later models), name."""
    rank = {n: i for i, n in enumerate(PAPER_ORDER + POST_PAPER_ORDER)}
    gidx = {g: i for i, g in enumerate(GROUPS)}
    uniq = dict.fromkeys((str(m), str(g)) for m, g in pairs)
    return sorted(uniq, key=lambda mg: (gidx.get(mg[1], len(gidx)), rank.get(mg[0], len(rank)), mg[0].lower()))


def is_proposed(group: str) -> bool:
    return group == PROPOSED_GROUP


def is_baseline(group: str) -> bool:
    """A model an Improv. row compares with: neither proposed nor the non-personalised floor."""
    return group not in (PROPOSED_GROUP, FLOOR_GROUP)


def proposed_model(pairs) -> str | None:
    """The proposed model among (model, group) pairs: the first of group "proposed" in row order."""
    return next((m for m, g in model_order(pairs) if is_proposed(g)), None)


def short_metric(metric: str) -> str:
    """"recall@20" -> "R@20" (table headers)."""
    name, _, k = metric.partition("@")
    return f"{SHORT_METRIC.get(name, name)}@{k}" if k else metric


def metric_label(metric: str) -> str:
    """"recall@20" -> "Recall@20" (figure axes)."""
    name, _, k = metric.partition("@")
    return f"{METRIC_LABELS.get(name, name)}@{k}" if k else METRIC_LABELS.get(name, name)


def source_text(source: str) -> str:
    """What a record's ``data_source`` is, in words."""
    return SOURCE_TEXT.get(source, f"{source} data")


def model_color(name: str, group: str) -> str:
    if is_proposed(group):
        return PROPOSED_COLOR
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    digest = int(hashlib.md5(name.encode()).hexdigest(), 16)
    return FALLBACK_PALETTE[digest % len(FALLBACK_PALETTE)]


def group_marker(group: str) -> str:
    return GROUP_MARKERS.get(group, "D")


def group_label(group: str) -> str:
    return GROUP_LABELS.get(group, group)
