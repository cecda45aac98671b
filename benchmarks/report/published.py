"""The published numbers (``paper/*.csv``) that the ``*_vs_paper`` tables compare with."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parent / "paper"
PAPER_FILES = {"missing": "table1_missing.csv", "new_items": "table2_new_items.csv",
               "retrieval": "table_retrieval_baby.csv"}


def load_paper_table(protocol: str) -> pd.DataFrame:
    """The published numbers as rows model, dataset_kind, metric, paper (retrieval: metric,
    column, paper, dataset_kind)."""
    df = pd.read_csv(PAPER_DIR / PAPER_FILES[protocol])
    if protocol == "retrieval":
        long = df.melt(id_vars="metric", var_name="column", value_name="paper").dropna(subset=["paper"])
        long["dataset_kind"] = "baby"
        return long.reset_index(drop=True)
    long = df.drop(columns=["group"]).melt(id_vars="model", var_name="key", value_name="paper")
    split = long["key"].str.split("_", n=1, expand=True)
    long["dataset_kind"], long["metric"] = split[0], split[1]
    return long.drop(columns="key").dropna(subset=["paper"]).reset_index(drop=True)


def relative_difference(ours: float, paper: float) -> float:
    """100 · (ours − paper) / paper."""
    return 100.0 * (ours - paper) / paper if paper else float("nan")
