"""What the benchmark scripts share: the official implementation's results on the reference
TikTok data (``tiktok-official-results.json``, the figures every comparison is made against)
and writing a printed table to the results folder."""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.errors import DataError
from data_prep.shared import reference_root

REFERENCE = reference_root()
OFFICIAL_RESULTS = REFERENCE / "tiktok-official-results.json"
# further seeds of the official code on the same data, written by benchmarks.experiments.official_runs
EXTRA_SEEDS = Path(__file__).resolve().parent / "reference" / "tiktok-official-extra-seeds.json"


def official_records(path: str | Path = OFFICIAL_RESULTS) -> list[dict]:
    """Every run record of an official results file; empty when the file is absent (the
    reference data is not beside the project). A malformed file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "model" in r for r in records):
        raise DataError(path, "expected a JSON list of run records, each with a 'model'")
    return records


def parse_seeds(text: str) -> list[int]:
    """A benchmark script's ``--seeds`` value; anything but comma-separated integers stops the script."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {text!r}") from None


def publish(text: str, path: str | Path) -> Path:
    """Print a benchmark's table and write it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written to {path}")
    return path
