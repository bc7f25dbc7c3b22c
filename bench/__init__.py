"""commonsync's benchmarks (``python -m bench``; see bench/README.md).

Each runs commonsync and its references on the same data, in the same run, alternating, and
reports medians, ratios and the absolute figures beside them (bench/README.md).
"""
