"""Stems from MIDI: each track assigned to one of the six stems (``tracks``), rendered to audio by FluidSynth with a
General MIDI SoundFont or by the synthesized corpus's additive instruments (``render``), and written as a folder of
stems, mixes and the ``manifest.jsonl`` that extraction reads (``manifest``; ``hummingml stems render``).

The format and the rules are in docs/stems.md. May import ``hummingml.audio``, ``hummingml.config``,
``hummingml.stages`` (``NoteEvent``) and ``hummingml.testing`` (the additive instruments).
"""
