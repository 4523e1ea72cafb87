"""admission.bench: the engine behind `admission bench`.

It serves a target application under the middleware once per window size, drives a
closed-loop load at it, and recommends the smallest window that keeps throughput near its
best (`command` is the CLI entry, `sweep` serves and measures, `loadgen` is the load
generator, `recommend` holds the pure arithmetic, `report` the table, JSON and plot).
"""
