"""Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (mitmproxy's test/conftest.py does the same).

* fast (default, set by tests/conftest.py): ~200 examples per property, keeps the unit+property run short.
* deep: many more examples, for a nightly or a manual `HYPOTHESIS_PROFILE=deep pytest tests/property`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fast",
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=5000,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
