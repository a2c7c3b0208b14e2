import os
import tempfile

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# tests never read or write the user's tuning database
os.environ["TENSORCOMP_CACHE_DIR"] = tempfile.mkdtemp(prefix="tensorcomp-test-cache-")
