"""Shared test helpers. Data in ../shared/data is optional: tests that need it skip without."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"{SHARED_DATA} not found: real-data tests need ../shared/data beside the clone"
        )
    return SHARED_DATA
