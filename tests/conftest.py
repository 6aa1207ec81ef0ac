"""Prepared datasets of the tests go to a temporary cache, never to the user's ~/.cache; the
compiled programs too (shared by the test's subprocesses, so each is compiled once a session)."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="session")
def _piaug_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("piaug_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("PIAUG_CACHE", str(cache))
    mp.setenv("JAX_COMPILATION_CACHE_DIR", str(cache / "jax"))
    jax.config.update("jax_compilation_cache_dir", str(cache / "jax"))
    yield
    mp.undo()
