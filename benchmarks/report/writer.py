"""The report of a results folder: every requested protocol's tables and figures, the per-group
and cost tables, and ``index.md`` linking them with the notes of the run.

    python -m benchmarks.report.writer results [protocol ...]

rebuilds the report of ``results/`` from its store (by default the protocols present in it).
"""
from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.report import axes, cost, groups, imputation, levels, main_tables, ratios, retrieval, significance
from benchmarks.report.captions import data_caption
from benchmarks.report.selection import PROTOCOL_NAMES, latest_settings, select_grid, unique_jobs
from benchmarks.run.store import ResultStore

SECTION_TITLES = {"missing": "Table 1: missing modalities (`missing`)",
                  "new_items": "Table 2: missing modalities and new items (`new_items`)",
                  "missing_level": "Missing-level analysis (`missing_level`)",
                  "missing_ratio": "Missing-ratio analysis (`missing_ratio`)",
                  "retrieval": "Cross-modal retrieval (`retrieval`)",
                  "imputation": "Imputation methods (`imputation`)"}


def write_report(records: list[dict], results_dir: str | Path, protocols=None, store: ResultStore | None = None,
                 figures: bool = True) -> list[Path]:
    """Write the tables, figures and ``index.md`` of the requested protocols; return the files written.

    ``protocols``: names of ``PROTOCOL_NAMES``, ``["all"]``, or None for those present in the
    records. ``store`` supplies per-user vectors for significance tests; by default the store in
    ``results_dir`` when it holds per-user files.
    """
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    if store is None and (out / "per_user").is_dir():
        store = ResultStore(out)
    records, superseded = latest_settings(unique_jobs(records))
    protocols = _requested(protocols, records)
    written: list[Path] = []
    index: list[str] = []  # markdown lines
    notes: list[str] = []
    every_record = records
    records, axes_notes = axes.primary_records(records)  # one imputation/mechanism in the paper layouts
    if set(protocols) - {"imputation"}:
        notes.extend(axes_notes)

    for protocol in protocols:
        before = len(written)
        if protocol in ("missing", "new_items"):
            sec = main_tables.section(records, protocol, out, store, written, notes)
            sec += significance.section(records, protocol, out, store, written)
        elif protocol == "missing_level":
            sec = levels.section(records, out, written, figures)
        elif protocol == "missing_ratio":
            sec = ratios.section(records, out, written, figures)
        elif protocol == "imputation":
            sec = imputation.section(every_record, out, written, figures)
        else:
            sec = retrieval.section(records, out, written)
        index.append(f"## {SECTION_TITLES[protocol]}\n")
        index.extend(sec)
        if len(written) == before and not sec:
            index.append("No results for this protocol in this run.\n")
        index.append("")

    groups_sec = groups.section(records, protocols, out, written, figures)
    if groups_sec:
        index += ["## Per-group results and exposure\n"] + groups_sec + [""]
    cost_sec = cost.section(records, protocols, out, written, figures)
    if cost_sec:
        index += ["## Cost\n"] + cost_sec + [""]

    idx = out / "index.md"
    idx.write_text("\n".join(_head(every_record, protocols, superseded, notes) + index
                             + _notes(notes)) + "\n")
    written.append(idx)
    return written


def _requested(protocols, records: list[dict]) -> list[str]:
    """The protocols to write, in ``PROTOCOL_NAMES`` order."""
    if isinstance(protocols, str):
        protocols = [protocols]
    if protocols is None:
        protocols = present_protocols(records)
    elif "all" in protocols:
        protocols = PROTOCOL_NAMES
    unknown = sorted(set(protocols) - set(PROTOCOL_NAMES))
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; known: {', '.join(PROTOCOL_NAMES)}, all")
    return [p for p in PROTOCOL_NAMES if p in set(protocols)]


def _head(records: list[dict], protocols: list[str], superseded: list[dict], notes: list[str]) -> list[str]:
    """The index's title, job counts and data caption; adds the superseded and failed jobs to ``notes``."""
    failed = [r for r in records if r.get("status") == "failed"]
    ok = [r for r in records if r.get("status") == "ok"]
    head = ["# Results in this folder", "",
            f"{len(ok)} finished jobs, {len(failed)} failed; protocols: {', '.join(protocols) or 'none'}. "
            f"The tables cover every run made into this folder (its `results.jsonl`); every table and "
            f"figure is linked below."]
    if superseded:
        by = sorted({(r["model"], r["dataset"], r["protocol"]) for r in superseded})
        notes.append(f"{len(superseded)} record(s) of earlier runs with other settings of the same cells are left "
                     f"out of the tables (a newer run replaced them): "
                     + "; ".join(f"{m} on {d} ({p})" for m, d, p in by) + ".")
    if ok:
        head += ["", data_caption(select_grid(ok))]
    head.append("")
    if failed:
        by_cell: dict[tuple, list[str]] = {}
        for r in failed:
            by_cell.setdefault((r["model"], r["dataset"]), []).append(str(r.get("seed")))
        notes.append("Failed jobs (excluded from every table): " + "; ".join(
            f"{m} on {d} (seeds {', '.join(s)})" for (m, d), s in sorted(by_cell.items())) + ".")
    return head


def _notes(notes: list[str]) -> list[str]:
    return ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""] if notes else []


def present_protocols(records: list[dict]) -> list[str]:
    """The report protocols the records can fill: the job protocols run, and the analyses whose
    data the ``missing`` records carry (levels, several ratios, retrieval, several imputations)."""
    jps = {r.get("protocol") for r in records if r.get("status") == "ok"}
    out = [p for p in ("missing", "new_items") if p in jps]
    if "missing" in jps:
        if any(levels.has_levels(r) for r in records):
            out.append("missing_level")
        ratio_sets: dict[str, set] = {}
        for r in records:
            if r.get("protocol") == "missing" and r.get("status") == "ok":
                ratio_sets.setdefault(r["dataset"], set()).add(r.get("missing_ratio"))
        if any(len(v) > 1 for v in ratio_sets.values()):
            out.append("missing_ratio")
        if any("retrieval" in (r.get("extra") or {}) for r in records):
            out.append("retrieval")
        if len({axes.imputation_of(r) for r in records if r.get("protocol") == "missing"
                and axes.uses_features(r)}) > 1:
            out.append("imputation")
    return out


def main(argv: list[str]) -> None:
    results = Path(argv[0]) if argv else Path("results")
    store = ResultStore(results)
    for path in write_report(store.records(), results, argv[1:] or None, store):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
