import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# tests never read or write the user's tuning database
os.environ["TENSORCOMP_CACHE_DIR"] = tempfile.mkdtemp(prefix="tensorcomp-test-cache-")


@pytest.fixture
def avx2(monkeypatch):
    """The AVX2 vector facts (16 registers of 32 bytes), whatever the host: the tests of the default
    schedule's tile shapes state the shapes those facts give. (Every other test runs under the
    host's facts, AVX-512 where LLVM targets it.)"""
    from tensorcomp import target
    for name, value in target.AVX2.items():
        monkeypatch.setattr(target, name, value)
