"""The one table model of the reports: ``build_grid`` makes every table (a ``Grid`` of ``Cell``s)
from its rows, its columns and a function giving each cell; a Grid renders as Markdown (tabulate,
GitHub style) and LaTeX (booktabs).

Bold/underline mark the best and second-best value as printed, so equal printed values get the
same mark: a number cell carries its printed value (``Cell.rank``), and ``build_grid`` ranks those
per column or within each span of a row.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tabulate import tabulate

DASH = "–"  # a cell that was not run


@dataclass
class Cell:
    text: str
    style: str = ""  # "best" | "second" | ""
    mark: str = ""  # significance: "**", "*", "n.s." or ""
    below_floor: bool = False  # below the non-personalised floor (ItemPop) of its column: marked †
    rank: float | None = None  # the value as printed, compared for bold/underline; None: not ranked

    def md(self) -> str:
        t = self.text + ("†" if self.below_floor else "")
        if self.style == "best":
            t = f"**{t}**"
        elif self.style == "second":
            t = f"<u>{t}</u>"
        if self.mark:
            t += self.mark.replace("*", r"\*") if set(self.mark) == {"*"} else " " + self.mark
        return t

    def tex(self) -> str:
        t = tex_escape(self.text) + ("$^\\dagger$" if self.below_floor else "")
        if self.style == "best":
            t = f"\\textbf{{{t}}}"
        elif self.style == "second":
            t = f"\\underline{{{t}}}"
        if self.mark:
            t += f"$^{{{self.mark}}}$" if set(self.mark) == {"*"} else " " + tex_escape(self.mark)
        return t


def fmt(mean, std=None, digits: int = 4) -> str:
    """"0.1234", "0.1234±0.0100" (std NaN: the mean alone), or a dash for a missing mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f}±{std:.{digits}f}"


def number(value, digits: int = 4, **kw) -> Cell:
    """A number cell, ranked by its printed value; a dash for a missing value."""
    if value is None or not np.isfinite(value):
        return Cell(DASH, **kw)
    return Cell(fmt(value, digits=digits), rank=round(float(value), digits), **kw)


def rank_styles(values: dict, digits: int = 4) -> dict:
    """key -> "best" / "second" / "" by the value as printed; ties share a mark."""
    printed = {k: round(float(v), digits) for k, v in values.items() if v is not None and np.isfinite(v)}
    distinct = sorted(set(printed.values()), reverse=True)
    out = {k: "" for k in values}
    for k, v in printed.items():
        if distinct and v == distinct[0]:
            out[k] = "best"
        elif len(distinct) > 1 and v == distinct[1]:
            out[k] = "second"
    return out


@dataclass(frozen=True)
class Column:
    key: object  # passed to the cell function
    header: str
    span: str | None = None  # a header over the run of adjacent columns with the same span


@dataclass
class Grid:
    """A table to render: leaf headers, optional header spans, rows of cells."""
    title: str
    caption: str
    headers: list[str]
    rows: list[list[Cell]]
    n_label: int = 1  # leading label columns
    spans: list[tuple[str, int]] | None = None  # over the non-label columns
    sections: dict[int, str] = field(default_factory=dict)  # row index -> section label (LaTeX rows)
    rules: set = field(default_factory=set)  # row indices preceded by a \midrule
    label: str = ""
    md_group_col: list[str] | None = None  # markdown: a leading "group" column (LaTeX uses section rows)

    def add_row(self, cells: list[Cell], rule: bool = False) -> None:
        """Append a row after the built ones (a summary row such as Improv.), optionally after a rule."""
        if rule:
            self.rules.add(len(self.rows))
        self.rows.append(cells)
        if self.md_group_col is not None:
            self.md_group_col.append("")

    def markdown(self) -> str:
        if self.spans:
            flat, i = list(self.headers[:self.n_label]), self.n_label
            for name, n in self.spans:
                for h in self.headers[i:i + n]:
                    flat.append(f"{name} {h}".strip())
                i += n
            headers = flat
        else:
            headers = self.headers
        body = [[c.md() for c in row] for row in self.rows]
        if self.md_group_col is not None:
            headers = ["group"] + list(headers)
            body = [[grp] + row for grp, row in zip(self.md_group_col, body)]
        return (f"**{self.title}.** {self.caption}\n\n"
                + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n")

    def latex(self) -> str:
        ncol = len(self.headers)
        wide = ncol > 8
        env = "table*" if wide else "table"
        lines = ["% requires \\usepackage{booktabs}" + ("" if not wide else " and \\usepackage{graphicx}"),
                 f"\\begin{{{env}}}[t]", "\\centering",
                 f"\\caption{{\\textbf{{{tex_escape(latex_title(self.title))}.}} {tex_escape(self.caption)}}}"]
        if self.label:
            lines.append(f"\\label{{{self.label}}}")
        if wide:
            lines.append("\\resizebox{\\textwidth}{!}{%")
        lines.append(f"\\begin{{tabular}}{{{'l' * self.n_label}{'c' * (ncol - self.n_label)}}}")
        lines.append("\\toprule")
        if self.spans:
            top, rules, col = [""] * self.n_label, [], self.n_label + 1
            for name, n in self.spans:
                top.append(f"\\multicolumn{{{n}}}{{c}}{{{tex_escape(name)}}}" if n > 1 else tex_escape(name))
                if name:
                    rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
                col += n
            lines.append(" & ".join(top) + " \\\\")
            if rules:
                lines.append(" ".join(rules))
        lines.append(" & ".join(tex_escape(h) for h in self.headers) + " \\\\")
        lines.append("\\midrule")
        for i, row in enumerate(self.rows):
            if i in self.rules and i > 0:
                lines.append("\\midrule")
            if i in self.sections:
                if i > 0 and i not in self.rules:
                    lines.append("\\midrule")
                lines.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\textit{{{tex_escape(self.sections[i])}}}}} \\\\")
            lines.append(" & ".join(c.tex() for c in row) + " \\\\")
        lines.append("\\bottomrule")
        lines.append("\\end{tabular}" + ("}" if wide else ""))
        lines.append(f"\\end{{{env}}}")
        return "\n".join(lines) + "\n"


CellValue = Cell | str | None


def build_grid(title: str, caption: str, label: str, label_headers: Sequence[str],
               rows: Sequence[tuple[Sequence[str], object]], columns: Sequence[Column],
               cell: Callable[[object, object], CellValue], rank: str | None = None,
               groups: Sequence[str] | None = None) -> Grid:
    """A table: one row per ``(labels, key)`` of ``rows`` (``labels`` fill the label columns named
    by ``label_headers``), one column per ``Column``, and ``cell(row key, column key)`` in each
    (a Cell, a text, or None for a dash).

    ``rank``: None; "column" marks the best and second value of each column; "span" marks them
    within each span of a row. ``groups``: a group name per row (Table 1/2): LaTeX starts a
    section row where it changes, Markdown shows it in a leading column once per group.
    """
    body = []
    for labels, key in rows:
        values = [_as_cell(cell(key, c.key)) for c in columns]
        body.append([Cell(str(x)) for x in labels] + values)
    n_label = len(label_headers)
    spans = _spans(columns)
    if rank == "column":
        for j in range(n_label, n_label + len(columns)):
            _mark([row[j] for row in body])
    elif rank == "span":
        for row in body:
            start = n_label
            for _, n in spans or [("", len(columns))]:
                _mark(row[start:start + n])
                start += n
    elif rank is not None:
        raise ValueError(f"rank must be None, 'column' or 'span', not {rank!r}")
    sections, md_group_col = {}, None
    if groups is not None:
        md_group_col, prev = [], None
        for i, g in enumerate(groups):
            md_group_col.append(g if g != prev else "")
            if g != prev:
                sections[i] = g
            prev = g
    return Grid(title, caption, list(label_headers) + [c.header for c in columns], body, n_label, spans, sections,
                label=label, md_group_col=md_group_col)


def _as_cell(value: CellValue) -> Cell:
    return value if isinstance(value, Cell) else Cell(DASH if value is None else str(value))


def _spans(columns: Sequence[Column]) -> list[tuple[str, int]] | None:
    if all(c.span is None for c in columns):
        return None
    spans: list[tuple[str, int]] = []
    for c in columns:
        if spans and spans[-1][0] == c.span:
            spans[-1] = (c.span, spans[-1][1] + 1)
        else:
            spans.append((c.span, 1))
    return spans


def _mark(cells: list[Cell]) -> None:
    styles = rank_styles({i: c.rank for i, c in enumerate(cells) if c.rank is not None})
    for i, style in styles.items():
        cells[i].style = style


def latex_title(title: str) -> str:
    """The title without its own "Table N": LaTeX's caption numbers the table itself (no
    "Table 1: Table 2 (...)"). "Table 2 (missing modalities + new items), mean ± std" becomes
    "Missing modalities + new items, mean ± std"."""
    m = re.match(r"^Table \d+\s*\((.*?)\)(.*)$", title)
    if not m:
        return title
    text = m.group(1) + m.group(2)
    return text[:1].upper() + text[1:]


def tex_escape(text: str) -> str:
    text = str(text)
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("$", "\\$"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\^{}")):
        text = text.replace(a, b)
    for a, b in (("<", "$<$"), (">", "$>$"), ("±", "$\\pm$"), ("−", "$-$"), ("–", "--"), ("—", "---"),
                 ("Δ", "$\\Delta$"), ("→", "$\\to$"), ("×", "$\\times$"), ("≥", "$\\geq$"), ("·", "$\\cdot$")):
        text = text.replace(a, b)
    return text
