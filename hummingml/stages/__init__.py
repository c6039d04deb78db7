"""Feature stages: functions and classes on float32 ``(channels, samples)`` arrays plus ``sample_rate``.

``pitch`` (Basic Pitch notes), ``synth`` (the sine rendering of notes), ``separate`` (six Demucs stems), ``codec``
(DAC codes) and ``augment`` (variants of the mono reference). A stage does no file I/O and no Ray. Model-backed
stages are classes that load their model once (``Separator``, ``PitchDetector``, ``Codec``) with one batch method
each (``separate_batch``, ``encode_batch``) next to the single-clip one; ``hummingml.extract.steps`` wraps them.

May import ``hummingml.audio`` and ``hummingml.weights``.
"""
