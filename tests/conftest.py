"""Test-wide settings: property tests are deterministic and never fail on a slow CI machine's clock."""

import os

from hypothesis import HealthCheck, settings

# "biocorpus" (default): the same examples on every run, so CI cannot turn red by chance, and no
# deadline, so a 2-core machine shared with other jobs does not fail a test for being slow.
# HYPOTHESIS_PROFILE=explore draws new random examples each run, to hunt for bugs.
settings.register_profile(
    "biocorpus", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "biocorpus"))
