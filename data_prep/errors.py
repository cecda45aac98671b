"""Errors raised for bad input data.

Every loader error names the file it was reading and what is wrong with it, so a
user can fix the file without reading a traceback from inside numpy or pandas.
"""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent with the rest of the dataset."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
