"""The settings of ``hummingml stems render`` and what its soundfont renderer needs from the system.

Light to import (no numpy, no MIDI library): the command line builds and checks :class:`RenderConfig` before anything
else is imported or written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from hummingml.config import at_least

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian's fluid-soundfont-gm
APT_PACKAGES = "libfluidsynth3 fluid-soundfont-gm"  # what the soundfont renderer needs from Debian
SAMPLE_RATE = 44_100  # Hz, the default rate of the written WAVs (hummingml.audio.SOURCE_SAMPLE_RATE)


@dataclass(frozen=True)
class RenderConfig:
    """``hummingml stems render MIDI_DIR --out DIR``: which files, which renderer, where to."""

    midi_dir: str = ""  # the folder of MIDI files (.mid, .midi; searched recursively)
    out: str = "stems-out"  # the folder to write mix/, stems/ and manifest.jsonl into (created if missing)
    renderer: Literal["soundfont", "additive"] = "soundfont"  # soundfont: FluidSynth + a General MIDI SoundFont;
    # additive: the synthesized corpus's instruments (docs/stems.md)
    soundfont: str = DEFAULT_SOUNDFONT  # the .sf2 the soundfont renderer plays (Debian fluid-soundfont-gm)
    sample_rate: int = SAMPLE_RATE  # Hz of the written WAVs
    seed: int = 0  # the additive renderer's draws (instrument, pan, drum noise); the soundfont renderer draws nothing

    def problems(self) -> list[str]:
        """Every value no rendering can use, one line per problem (the soundfont renderer's missing parts too)."""
        out = [] if self.midi_dir else ["MIDI_DIR is required"]
        if self.midi_dir and not os.path.isdir(self.midi_dir):
            out.append(f"MIDI_DIR {self.midi_dir} is not a folder")
        if not self.out:
            out.append("--out must not be empty")
        out += at_least("--sample-rate", self.sample_rate, 8000) + at_least("--seed", self.seed, 0)
        if self.renderer == "soundfont" and (why := soundfont_problem(self.soundfont)):
            out.append(why)
        return out


def import_fluidsynth() -> Any:
    """The ``fluidsynth`` module of pyfluidsynth, or an ImportError of one line that says what to install."""
    try:
        import fluidsynth
    except ModuleNotFoundError as exc:
        raise ImportError("the soundfont renderer needs the pyfluidsynth binding: pip install pyfluidsynth") from exc
    except (ImportError, OSError) as exc:  # the binding loads libfluidsynth when imported
        raise ImportError(
            f"the soundfont renderer needs the FluidSynth library: apt-get install {APT_PACKAGES}"
        ) from exc
    return fluidsynth


def soundfont_problem(soundfont: str = DEFAULT_SOUNDFONT) -> str | None:
    """Why the soundfont renderer cannot run here (the binding, the library or the SoundFont is missing), or None."""
    try:
        import_fluidsynth()
    except ImportError as exc:
        return str(exc)
    if not os.path.isfile(soundfont):
        return (
            f"--soundfont {soundfont}: no such file; install Debian's General MIDI SoundFont (apt-get install "
            "fluid-soundfont-gm) or pass another .sf2"
        )
    return None
