"""Where the project's shared material lies: ``../shared`` beside the checkout.

The official release's files and the reference data (real interactions, surrogate features)
sit in a folder next to the checkout on every machine the project runs on, so they are found
relative to this file; ``DGMREC_SHARED`` names another folder. No path of one machine is
written anywhere in the project.
"""
from __future__ import annotations

import os
from pathlib import Path

SHARED_ENV = "DGMREC_SHARED"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    env = os.environ.get(SHARED_ENV, "").strip()
    return Path(env) if env else PROJECT_ROOT.parent / "shared"


def reference_root() -> Path:
    """Reference datasets (real interactions and masks, surrogate features)."""
    return shared_root() / "data" / "reference"


def release_root() -> Path:
    """The official DGMRec release's interaction files, splits and masks."""
    return shared_root() / "data" / "dgmrec-release"
