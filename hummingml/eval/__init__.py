"""Evaluation and generation with trained checkpoints.

- ``metrics``: SI-SDR and summaries; ``part_audio``: a part's audio found again from the source;
- ``evaluate``: token accuracies and SI-SDR of checkpoints on held-in and held-out examples; ``plots``: its PNG;
- ``generate``: hum -> instrument audio;
- ``decode``: one stored stream of one segment back to audio with the output's own DAC (``hummingml decode``);
- ``config``: the configs and flags of the three, with no torch or Ray import (the ``hummingml`` command's parsers).

May import every other part of ``hummingml``; nothing imports it except the CLI, ``hummingml.api`` and ``ray_jobs``.
"""
