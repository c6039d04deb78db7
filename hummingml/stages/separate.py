"""Six-stem source separation with Demucs, on arrays.

A Demucs model has its own sources; :func:`stem_mapping` sends each source to one of our six :data:`STEMS` (several
sources may sum into one stem). The default, :data:`DEFAULT_SOURCE_TO_STEM`, maps our own names 1:1 and maps
``htdemucs_6s``'s two extra sources as follows:

- ``guitar -> lead``: our ``lead`` is the melodic part that is not the voice (solo lines, riffs, counter-melodies), the
  role guitar plays most often in the music htdemucs_6s was trained on;
- ``piano -> chordal``: piano mostly plays the harmony (block chords, comping), which is our ``chordal``.

A rhythm guitar therefore lands in ``lead`` and a piano melody in ``chordal``; pass ``source_to_stem`` to change
that. A stem that no source feeds (e.g. ``lead`` and ``chordal`` for the 4-source ``htdemucs``) is an error unless it
is listed in ``silent_stems``, in which case it is returned as zeros.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hummingml.audio import F32, STEMS, resample
from hummingml.weights.config import ModelIdentity, ModelsConfig, resolve_device
from hummingml.weights.load import load_demucs

HTDEMUCS_6S_SOURCES = ("drums", "bass", "other", "vocals", "guitar", "piano")  # demucs htdemucs_6s, in model order
DEFAULT_SOURCE_TO_STEM: Mapping[str, str] = {
    **{stem: stem for stem in STEMS},  # a model whose sources are our stems (the tiny and random-full models)
    "guitar": "lead",  # htdemucs_6s: lead lines and riffs
    "piano": "chordal",  # htdemucs_6s: harmony
}


@dataclass(frozen=True)
class Stems:
    """Six stems, each float32 ``(2, samples)`` at ``sample_rate`` Hz."""

    drums: F32
    bass: F32
    vocals: F32
    lead: F32
    chordal: F32
    other: F32
    sample_rate: int

    def as_dict(self) -> dict[str, F32]:
        """``{stem: (2, samples)}`` in :data:`STEMS` order."""
        return {stem: getattr(self, stem) for stem in STEMS}

    def stacked(self) -> F32:
        """All stems as float32 ``(6, 2, samples)`` in :data:`STEMS` order."""
        return np.stack([getattr(self, stem) for stem in STEMS])


@dataclass(frozen=True)
class SeparateConfig:
    """How :func:`separate` runs Demucs and maps its sources to our stems, and which model :class:`Separator` loads."""

    source_to_stem: Mapping[str, str] | None = None  # model source -> our stem; None: DEFAULT_SOURCE_TO_STEM
    # restricted to the model's sources. Every source must be mapped; several may feed one stem.
    silent_stems: tuple[str, ...] = ()  # stems deliberately fed by no source, returned as zeros
    segment_s: float | None = None  # seconds per model call; None: the model's training segment (htdemucs 7.8 s,
    # also the maximum for a transformer model)
    overlap: float = 0.25  # fraction of a segment shared by consecutive segments (cross-faded)
    shifts: int = 0  # Demucs' shift trick: average over this many random time shifts (each costs one more pass)
    seed: int = 0  # seeds the random shifts, so shifts > 0 stays deterministic
    batch_size: int = 4  # clips of equal length separated in one apply_model call
    output_sample_rate: int | None = None  # None: stems come back at the input's rate and length
    device: str = "auto"  # where Separator puts the model: "auto" = cuda when available, else cpu
    models: ModelsConfig = field(default_factory=ModelsConfig)  # which weights Separator loads when none is injected


def stem_mapping(sources: Sequence[str], cfg: SeparateConfig = SeparateConfig()) -> dict[str, str]:
    """Check and return the mapping source -> stem for a model with ``sources``.

    Raises:
        ValueError: a source is unmapped or mapped to something not in :data:`STEMS`, a mapped name is not a source
            of the model, a model source is listed twice, or a stem is fed by no source without being in
            ``cfg.silent_stems`` (or is in it and fed anyway).
    """
    if len(set(sources)) != len(sources):
        raise ValueError(f"the model lists a source twice: {list(sources)}")
    if cfg.source_to_stem is None:
        mapping = {s: DEFAULT_SOURCE_TO_STEM[s] for s in sources if s in DEFAULT_SOURCE_TO_STEM}
    else:
        mapping = dict(cfg.source_to_stem)
        unknown = sorted(set(mapping) - set(sources))
        if unknown:
            raise ValueError(f"source_to_stem names {unknown}, which the model does not have (it has {list(sources)})")
    unmapped = [s for s in sources if s not in mapping]
    if unmapped:
        raise ValueError(f"model sources {unmapped} are not mapped to a stem; add them to source_to_stem")
    bad = sorted({stem for stem in mapping.values() if stem not in STEMS})
    if bad:
        raise ValueError(f"source_to_stem maps to {bad}, which are not stems; stems are {STEMS}")
    unknown_silent = sorted(set(cfg.silent_stems) - set(STEMS))
    if unknown_silent:
        raise ValueError(f"silent_stems lists {unknown_silent}, which are not stems; stems are {STEMS}")
    fed = set(mapping.values())
    unfed = [stem for stem in STEMS if stem not in fed and stem not in cfg.silent_stems]
    if unfed:
        raise ValueError(
            f"stems {unfed} get no source (model sources: {list(sources)}); map a source to them or list them in "
            "silent_stems to get silence"
        )
    fed_silent = sorted(fed & set(cfg.silent_stems))
    if fed_silent:
        raise ValueError(f"stems {fed_silent} are in silent_stems but fed by a source")
    return {s: mapping[s] for s in sources}


def _max_segment_s(model: Any) -> float | None:
    """The longest segment the model accepts (HTDemucs: its training segment), or None for no limit."""
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    if isinstance(model, BagOfModels):
        limit = model.max_allowed_segment
        return None if limit == float("inf") else float(limit)
    return float(model.segment) if isinstance(model, HTDemucs) else None


@contextmanager
def _python_random_seed(seed: int) -> Iterator[None]:
    """apply_model draws its shifts from Python's global ``random``; seed it for a block and restore it after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _to_model_layout(audio: F32, sample_rate: int, model_rate: int) -> F32:
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be mono or stereo (channels, samples), got shape {audio.shape}")
    stereo = np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio
    return resample(stereo.astype(np.float32, copy=False), sample_rate, model_rate)


def _fit_length(audio: F32, n: int) -> F32:
    """Trim or zero-pad the last axis to ``n`` samples (resampling keeps duration within one sample)."""
    if audio.shape[-1] >= n:
        return np.ascontiguousarray(audio[..., :n])
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, n - audio.shape[-1])])


def separate_batch(
    audios: Sequence[F32], sample_rates: Sequence[int] | int, model: Any, cfg: SeparateConfig = SeparateConfig()
) -> list[Stems]:
    """Separate several clips; clips of equal length (after resampling) share one model call.

    Args:
        audios: float32 ``(channels, samples)`` each, mono (duplicated to stereo) or stereo, any rate.
        sample_rates: the rate of each clip in Hz, or one rate for all.
        model: a Demucs model or bag (see :func:`hummingml.weights.load.load_demucs`) in eval mode; runs on its
            parameters' device.
        cfg: mapping, chunking and batching.

    Returns:
        One :class:`Stems` per clip, each stem float32 ``(2, samples)``: at the clip's rate and length, or at
        ``cfg.output_sample_rate`` with the same duration.
    """
    import torch
    from demucs.apply import apply_model

    mapping = stem_mapping(list(model.sources), cfg)
    max_segment = _max_segment_s(model)
    if cfg.segment_s is not None and max_segment is not None and cfg.segment_s > max_segment:
        raise ValueError(f"segment_s={cfg.segment_s} exceeds the model's maximum segment of {max_segment:g} s")
    rates = [sample_rates] * len(audios) if isinstance(sample_rates, int) else list(sample_rates)
    if len(rates) != len(audios):
        raise ValueError(f"{len(audios)} clips but {len(rates)} sample rates")
    model_rate = int(model.samplerate)
    device = next(model.parameters()).device

    mixes = [_to_model_layout(a, r, model_rate) for a, r in zip(audios, rates, strict=True)]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, mix in enumerate(mixes):
        by_length[mix.shape[-1]].append(i)
    results: list[Stems | None] = [None] * len(audios)
    for length, indices in by_length.items():
        if length == 0:
            for i in indices:
                results[i] = _collect_stems(np.zeros((len(model.sources), 2, 0), np.float32), list(model.sources),
                                            mapping, model_rate, audios[i].shape[-1], rates[i], cfg.output_sample_rate)
            continue
        for k in range(0, len(indices), cfg.batch_size):
            batch = indices[k : k + cfg.batch_size]
            x = torch.from_numpy(np.stack([mixes[i] for i in batch]))  # (B, 2, T)
            # Demucs' own normalisation (demucs.api): zero mean, unit std of the mono reference, per clip.
            ref = x.mean(dim=1)  # (B, T)
            mean = ref.mean(dim=1)[:, None, None]
            std = (ref.std(dim=1) if length > 1 else torch.zeros(len(batch)))[:, None, None] + 1e-8
            with _python_random_seed(cfg.seed):
                out = apply_model(
                    model, (x - mean) / std, shifts=cfg.shifts, split=True, overlap=cfg.overlap,
                    segment=cfg.segment_s, device=device, progress=False,
                )  # (B, sources, 2, T)
            separated = (out * std[:, None] + mean[:, None]).cpu().numpy()  # (B, sources, 2, T) float32
            for j, i in enumerate(batch):
                results[i] = _collect_stems(separated[j], list(model.sources), mapping, model_rate, audios[i].shape[-1],
                                            rates[i], cfg.output_sample_rate)
    return [r for r in results if r is not None]


def _collect_stems(
    sources_out: F32, sources: list[str], mapping: dict[str, str], model_rate: int, n_input: int, input_rate: int,
    output_rate: int | None,
) -> Stems:
    """Sum sources ``(sources, 2, T)`` into stems and bring them to the output rate and length."""
    summed = {stem: np.zeros(sources_out.shape[1:], dtype=np.float32) for stem in STEMS}
    for k, source in enumerate(sources):
        summed[mapping[source]] += sources_out[k]
    rate = output_rate or input_rate
    n_out = round(n_input * rate / input_rate)
    stems = {stem: _fit_length(resample(wave, model_rate, rate), n_out) for stem, wave in summed.items()}
    return Stems(**stems, sample_rate=rate)


def separate(audio: F32, sample_rate: int, model: Any, cfg: SeparateConfig = SeparateConfig()) -> Stems:
    """Split a mix into our six stems with Demucs.

    Long audio runs in overlapping segments (``apply_model(split=True)``), so the memory beyond the input and the
    output is that of one segment.

    Args:
        audio: float32 ``(channels, samples)``, mono (duplicated to stereo) or stereo, any rate (resampled to the
            model's 44.1 kHz here).
        sample_rate: rate of ``audio`` in Hz.
        model: a Demucs model or bag in eval mode (see :func:`hummingml.weights.load.load_demucs`).
        cfg: mapping, chunking and output rate.

    Returns:
        :class:`Stems`, each float32 ``(2, samples)`` at ``sample_rate`` (or ``cfg.output_sample_rate``).
    """
    return separate_batch([audio], [sample_rate], model, cfg)[0]


class Separator:
    """Demucs loaded once per process (a Ray actor holds one); ``model`` injects an already loaded model.

    The stem mapping is checked against the model's sources here, so a bad mapping fails at start-up.
    ``identity`` says which weights were loaded (None for an injected model).
    """

    def __init__(self, cfg: SeparateConfig = SeparateConfig(), model: Any = None) -> None:
        self.cfg = cfg
        self.identity: ModelIdentity | None = None
        if model is None:
            model, self.identity = load_demucs(cfg.models)
        self.model = model.to(resolve_device(cfg.device)).eval()
        self.mapping = stem_mapping(list(self.model.sources), cfg)

    def separate(self, audio: F32, sample_rate: int) -> Stems:
        """Six stems of ``audio`` (float32 ``(channels, samples)`` at ``sample_rate`` Hz); see :func:`separate`."""
        return separate(audio, sample_rate, self.model, self.cfg)

    def separate_batch(self, audios: Sequence[F32], sample_rates: Sequence[int] | int) -> list[Stems]:
        """Six stems per clip, equal-length clips batched; see :func:`separate_batch`."""
        return separate_batch(audios, sample_rates, self.model, self.cfg)
