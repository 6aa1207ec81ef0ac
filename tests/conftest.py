"""Prepared datasets of the tests go to a temporary cache, never to the user's ~/.cache."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _piaug_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PIAUG_CACHE", str(tmp_path_factory.mktemp("piaug_cache")))
    yield
    mp.undo()
