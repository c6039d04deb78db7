from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pitch_detector():
    """One Basic Pitch model for the whole session (loading and warm-up take seconds)."""
    from hummingml.stages.pitch import PitchDetector

    return PitchDetector()
