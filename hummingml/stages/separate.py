"""Six-stem source separation with Demucs."""

from __future__ import annotations

STEMS = ("drums", "bass", "vocals", "lead", "chordal", "other")  # our six stems, in the order used everywhere
MELODIC_STEMS = ("vocals", "lead")  # monophonic melodic parts: Basic Pitch runs on these by default
