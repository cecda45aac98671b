"""Writing a report's files (tables as .md/.tex, data as .csv) and the index lines that link them."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from benchmarks.report.grid import Grid


def slug(name: str) -> str:
    """A dataset or protocol name as part of a file name (``synthetic:baby`` -> ``synthetic-baby``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def write_grids(grids: list[Grid], stem: Path, written: list[Path]) -> None:
    """``<stem>.md`` and ``<stem>.tex`` holding the grids one after the other (nothing for no grid)."""
    if not grids:
        return
    md = stem.with_suffix(".md")
    md.write_text("\n".join(g.markdown() for g in grids))
    tex = stem.with_suffix(".tex")
    tex.write_text("\n".join(g.latex() for g in grids))
    written.extend([md, tex])


def write_csv(df: pd.DataFrame, path: Path, written: list[Path]) -> None:
    df.to_csv(path, index=False)
    written.append(path)


def links(out: Path, stem: str, exts, label: str | None = None) -> str:
    """An index line linking the files ``<stem>.<ext>`` that exist."""
    files = [f"[{stem}.{e}]({stem}.{e})" for e in exts if (out / f"{stem}.{e}").exists()]
    return f"- {label + ': ' if label else ''}" + " · ".join(files)


def figure_links(files: list[Path]) -> str:
    """Index lines showing each PNG figure, linked beside its PDF."""
    png = [f for f in files if f.suffix == ".png"]
    pdf = [f for f in files if f.suffix == ".pdf"]
    lines = []
    for p in png:
        alt = p.stem.replace("_", " ")
        extra = "".join(f" · [{q.name}]({q.name})" for q in pdf if q.stem == p.stem)
        lines.append(f"- figure [{p.name}]({p.name}){extra}\n\n  ![{alt}]({p.name})")
    return "\n".join(lines)
