"""Feature stages: pure functions on float32 ``(channels, samples)`` arrays plus ``sample_rate``.

A stage does no file I/O and no Ray. Model-backed stages are classes that load their model once and are called on a
batch dict (the Ray actor idiom); the Ray glue lives in ``hummingml.extract.ray``.
"""
