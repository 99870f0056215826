"""Shared fixtures."""
import pytest

from recbole_scalrec.utils import shared_datasets_dir


@pytest.fixture(scope="session")
def shared_datasets():
    """The raw shared datasets folder (``recbole_scalrec.utils.shared_datasets_dir()``); skips when missing."""
    path = shared_datasets_dir()
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path} (set $SCALREC_SHARED_DATA)")
    return path
