"""``hummingml stems render``: every MIDI file of a folder rendered to six stems and a mix, and the manifest.

Layout of ``render_directory(cfg)`` (``<song>`` is the MIDI file's path under ``cfg.midi_dir`` without its
extension)::

    out/manifest.jsonl               one JSON object per rendered file (:func:`manifest_line`), for extraction
    out/mix/<song>.wav               the mix, stereo 16-bit PCM WAV at cfg.sample_rate
    out/stems/<song>/<stem>.wav      the six stems, same format; they sum to the mix (up to 16-bit rounding)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from hummingml.audio import STEMS, write_pcm16
from hummingml.config import ConfigError
from hummingml.stems.config import RenderConfig
from hummingml.stems.render import AdditiveRenderer, RenderedSong, SoundFontRenderer
from hummingml.stems.tracks import read_parts

MIDI_EXTENSIONS = (".mid", ".midi")


@dataclass
class RenderSummary:
    """What :func:`render_directory` did: the songs written, and the files that could not be rendered (why)."""

    rendered: list[str] = field(default_factory=list)  # song ids, in manifest order
    failed: dict[str, str] = field(default_factory=dict)  # MIDI path -> reason


def midi_files(midi_dir: str) -> list[Path]:
    """The MIDI files under ``midi_dir`` (any depth), sorted by path."""
    return sorted(p for p in Path(midi_dir).rglob("*") if p.is_file() and p.suffix.lower() in MIDI_EXTENSIONS)


def manifest_line(song_id: str, song: RenderedSong, midi: str, renderer: str, soundfont: str) -> dict[str, object]:
    """The manifest object of one rendered song; every path is relative to the manifest's folder.

    Fields: ``uri`` (the mix), ``stems`` (stem -> its WAV, all six), ``instruments`` (stem -> what played it, the
    stems that have notes), ``song_id``, ``midi`` (the source file's absolute path), ``renderer``, ``soundfont``
    (the .sf2 of the soundfont renderer, else ""), ``sample_rate`` and ``seconds``.
    """
    return {
        "uri": f"mix/{song_id}.wav",
        "stems": {stem: f"stems/{song_id}/{stem}.wav" for stem in STEMS},
        "instruments": song.instruments,
        "song_id": song_id,
        "midi": midi,
        "renderer": renderer,
        "soundfont": soundfont if renderer == "soundfont" else "",
        "sample_rate": song.sample_rate,
        "seconds": song.mix.shape[1] / song.sample_rate,
    }


def render_directory(cfg: RenderConfig, log: TextIO = sys.stdout) -> RenderSummary:
    """Render every MIDI file of ``cfg.midi_dir`` into ``cfg.out`` (layout in the module docstring).

    A file that cannot be read as MIDI is reported on ``log`` and left out of the manifest; the others are written.

    Raises:
        ConfigError: ``cfg.problems()``, before anything is written.
    """
    if problems := cfg.problems():
        raise ConfigError("\n".join(problems))
    renderer: AdditiveRenderer | SoundFontRenderer = (
        SoundFontRenderer(cfg.soundfont, cfg.sample_rate)
        if cfg.renderer == "soundfont"
        else AdditiveRenderer(cfg.sample_rate, cfg.seed)
    )
    root, summary, lines = Path(cfg.out), RenderSummary(), []
    for path in midi_files(cfg.midi_dir):
        song_id = path.relative_to(cfg.midi_dir).with_suffix("").as_posix()
        try:
            parts, end_s = read_parts(path.read_bytes())
        except (OSError, ValueError) as exc:
            summary.failed[str(path)] = str(exc)
            print(f"[stems] {path}: skipped: {exc}", file=log, flush=True)
            continue
        song = renderer.render(parts, end_s, song_id)
        (root / "mix" / song_id).parent.mkdir(parents=True, exist_ok=True)
        write_pcm16(root / "mix" / f"{song_id}.wav", song.mix, song.sample_rate)
        (root / "stems" / song_id).mkdir(parents=True, exist_ok=True)
        for stem, audio in song.stems.items():
            write_pcm16(root / "stems" / song_id / f"{stem}.wav", audio, song.sample_rate)
        lines.append(manifest_line(song_id, song, str(path.resolve()), renderer.name, cfg.soundfont))
        summary.rendered.append(song_id)
        print(
            f"[stems] {song_id}: {', '.join(f'{s} ({i})' for s, i in song.instruments.items())}", file=log, flush=True
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.jsonl").write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    return summary
