"""Fixtures shared by the test modules."""
import pytest
import torch

from benchmarks.run.discovery import discover

# Every test sees every model of the model packages registered, as the runner does.
discover()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny tensors run faster without OpenMP synchronisation
    (large on a shared 2-core machine), and CPU reductions are then exact from run to run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def require_shared(path, what: str = "the shared data") -> None:
    """Skip a test whose ``../shared`` input is absent, except in CI (``CI=true``), which always
    has it beside the checkout: there a missing folder is a failure, not a silent skip."""
    import os
    from pathlib import Path
    if Path(path).exists():
        return
    message = f"{what} not found at {path} (../shared beside the checkout, or $DGMREC_SHARED)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def release_dir():
    """The official release's folder under ../shared (skipped outside CI when absent)."""
    from data_prep.shared import release_root
    require_shared(release_root(), "the official release's files")
    return release_root()


@pytest.fixture(scope="session")
def reference_dir():
    """The reference datasets under ../shared (skipped outside CI when absent)."""
    from data_prep.shared import reference_root
    require_shared(reference_root(), "the reference data")
    return reference_root()


@pytest.fixture(scope="session")
def shared_data(release_dir, reference_dir):
    """Both shared folders (use as ``@pytest.mark.usefixtures("shared_data")``)."""
    return release_dir, reference_dir
