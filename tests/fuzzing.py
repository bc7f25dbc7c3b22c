"""How hard the decoder fuzz tests try: bounded in the ordinary suite, as long as one asks for.

Every fuzz test of a decoder takes its settings from :func:`fuzz` and carries the ``fuzz``
marker, so that

    ./dev fuzz                    # every decoder, 100 times the ordinary number of inputs
    ./dev fuzz 1000               # or any other multiple

runs the same tests with ``COMMONSYNC_FUZZ_SCALE`` times more inputs each (300 become 30,000
at the default of 100: about 100,000 inputs per decoder over its tests).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["SCALE", "fuzz"]

#: Multiplies every fuzz test's number of examples (1 in the ordinary suite).
SCALE = max(1, int(os.environ.get("COMMONSYNC_FUZZ_SCALE", "1")))


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a decoder fuzz test that tries ``examples`` inputs in the
    ordinary suite (``SCALE`` times more under ``./dev fuzz``), with no deadline."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
