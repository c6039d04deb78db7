"""Evaluation and generation with trained checkpoints.

- ``metrics``: SI-SDR and summaries; ``part_audio``: a part's audio found again from the source;
- ``evaluate``: token accuracies and SI-SDR of checkpoints on held-in and held-out examples; ``plots``: its PNG;
- ``generate``: hum -> instrument audio;
- ``config``: the configs and flags of both, with no torch or Ray import (the ``hummingml`` command's parsers).

May import every other part of ``hummingml``; nothing imports it except the CLI and ``ray_jobs``.
"""
