"""Errors raised for bad input data and for datasets that cannot be fetched.

Every loader error names the file it was reading and what is wrong with it, so a
user can fix the file without reading a traceback from inside numpy or pandas; every
download error says what to do instead (which files to place where, which option to add).
"""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent with the rest of the dataset."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DownloadError(Exception):
    """A dataset could not be fetched or accepted; the message says what to do instead."""


class UnknownDatasetError(DownloadError):
    """The manifest has no dataset of that name."""


class OfflineError(DownloadError):
    """No connection: the message lists the files to place by hand and where."""


class UnverifiedError(DownloadError):
    """A file has no published hash and ``allow_unverified`` was not given."""


class UnavailableError(DownloadError):
    """A file has no public source (the TikTok features)."""


class ChecksumError(DataError):
    """A file's content differs from the hash it must have."""

    def __init__(self, path, problem: str, expected: str | None = None, actual: str | None = None):
        super().__init__(path, problem)
        self.expected = expected
        self.actual = actual
