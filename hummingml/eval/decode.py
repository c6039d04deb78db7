"""Stored DAC codes back to audio: ``hummingml decode`` and the notebook API's ``read_codes`` / ``decode_codes``.

:func:`read_codes` reads one stream of one segment from an extraction output: the current row only (the files its
commit markers name, superseded rows dropped, ``hummingml.output``), found with a pyarrow filter on ``source_id`` and
``segment_index`` so that only the row groups that can hold it are read. :func:`load_codec` loads the DAC the output
was made with: the kind and seed that the row's file records (``hummingml.run``, see
:func:`hummingml.eval.generate.recorded_models_config`), refused when its weights' sha256 differs from the recorded
one. :func:`decode_codes` turns codes into float32 audio at the codec's rate with
:func:`hummingml.stages.codec.decode`.

Light on import: torch and the checkpoint code load inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from hummingml.config import ConfigError, from_flags
from hummingml.eval.config import DecodeConfig, Stream, parse_stream
from hummingml.output import COMMITS, join, open_root, set_files, superseded_filter, view
from hummingml.stages.codec import CodecTokens, frame_rate
from hummingml.weights.config import ModelIdentity, ModelsConfig, resolve_device

PROVENANCE_COLUMNS = ("source_uri", "segment_duration_s", "n_frames")  # read with every stream


@dataclass(frozen=True)
class StoredCodes:
    """The codes of one stream of one stored segment, and what decoding them needs."""

    codes: npt.NDArray[np.int16]  # (channels, n_codebooks, frames)
    source_id: str
    segment_index: int
    stream: str  # as given to read_codes: "vocals", "sine:mono", ...
    source_uri: str
    segment_duration_s: float  # the segment's length; decoded audio is cropped to it
    path: str  # the Parquet file that holds the row
    record: dict[str, Any] | None  # that file's run metadata (hummingml.run): config, model identities


def _no_row_message(root: str, source_id: str, segment_index: int, set_name: str) -> str:
    """Why ``root`` has no current ``set_name`` row for the key, from its commit log."""
    current = view(root, log=None)
    if current is None:
        return f"{root} holds no extraction output (no _commits folder)"
    state = current.sources.get(source_id)
    if state is None:
        example = next(iter(sorted(current.sources)), None)
        hint = f"; for example {example}" if example else ""
        return (
            f"{root} has no source {source_id!r} ({len(current.sources)} sources; ids are the 32-hex-digit "
            f"source_id column{hint})"
        )
    if segment_index in state.error_segments or -1 in state.error_segments:
        return f"segment {segment_index} of source {source_id} failed during extraction (see the errors set)"
    if state.n_segments >= 0 and segment_index >= state.n_segments:
        return f"source {source_id} has {state.n_segments} segments (0..{state.n_segments - 1}), not {segment_index}"
    return f"{root} has no {set_name} row for segment {segment_index} of source {source_id}"


def _codes(value: Any, what: str) -> npt.NDArray[np.int16]:
    codes = np.asarray(value if value is not None else [], dtype=np.int16)
    if codes.ndim != 3 or codes.size == 0:
        raise ConfigError(f"{what} holds no codes (shape {codes.shape})")
    return codes


def _pick(row: dict[str, Any], stream: Stream) -> npt.NDArray[np.int16]:
    """The stream's int16 ``(channels, n_codebooks, frames)`` codes from a row (a dict of its columns).

    Raises:
        ConfigError: the row has no such stream (a stem or melody stream not extracted, a variant or channel beyond
            the count); the message lists what the row has.
    """
    if stream.kind == "mono":
        return _codes(row["mono_codes"], "mono_codes")
    if stream.kind in ("mix", "channel"):
        channels = _codes(row["channel_codes"], "channel_codes")
        if stream.kind == "mix":
            return channels
        if stream.index >= channels.shape[0]:
            raise ConfigError(f"--stream {stream.text}: the source has {channels.shape[0]} channel(s); use left or mix")
        return channels[stream.index : stream.index + 1]
    if stream.kind == "stem":
        names = list(row["stem_names"] or [])
        if stream.name not in names:
            raise ConfigError(f"--stream {stream.text}: the row has no such stem; stems: {', '.join(names) or 'none'}")
        return _codes(row["stem_codes"][names.index(stream.name)], f"stem {stream.name}")
    if stream.kind == "sine":
        melody = {m["stream"]: m for m in row["melody"] or []}
        if stream.name not in melody:
            have = ", ".join(f"sine:{name}" for name in melody) or "none"
            raise ConfigError(f"--stream {stream.text}: the row has no such melody stream; melody streams: {have}")
        return _codes(melody[stream.name]["sine_codes"], stream.text)
    variants = row["mono_variants"] or []
    if stream.index >= len(variants):
        have = f"variant:0..variant:{len(variants) - 1}" if variants else "none (--mono-variants 0)"
        raise ConfigError(f"--stream {stream.text}: the row has {len(variants)} mono variant(s): {have}")
    return _codes(variants[stream.index]["codes"], stream.text)


def read_codes(
    root: str | os.PathLike[str],
    source_id: str,
    segment_index: int,
    stream: str = "mono",
    log: TextIO | None = sys.stderr,
) -> StoredCodes:
    """The codes of one stream of the current row of (``source_id``, ``segment_index``) in an extraction output.

    Only that row is read: the set's committed files (``hummingml.output.set_files``) are scanned with a pyarrow
    filter on the key, for the stream's columns only, and a superseded row is never returned.

    Args:
        root: the output root (local path or pyarrow URI).
        source_id: the source (its ``source_id``).
        segment_index: the segment, 0-based.
        stream: ``mono``, ``mix``, ``left``, ``right``, a stem (``vocals``, ...), ``sine:<melody stream>``
            (``sine:mono``, ``sine:vocals``, ...) or ``variant:<k>`` (:data:`hummingml.eval.config.STREAM_FORMS`).
        log: where a damaged commit marker or a missing committed file is reported.

    Raises:
        ConfigError: ``stream`` names no stream, ``root`` is no extraction output, it has no current row for the
            key (the message says whether the source is unknown, the segment out of range or failed), or the row
            lacks the stream.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from schemas.features import SCHEMAS

    try:
        wanted = parse_stream(stream)
    except ValueError as exc:
        raise ConfigError(f"--stream: {exc}") from exc
    root = os.fspath(root)
    root_fs, root_path = open_root(root)
    if root_fs.get_file_info(join(root_path, COMMITS)).type != pafs.FileType.Directory:
        raise ConfigError(f"{root} holds no extraction output (no _commits folder)")
    fs, files, superseded = set_files(root, wanted.set_name, log)
    keep = superseded_filter(superseded)
    found: tuple[dict[str, Any], str] | None = None
    if files:
        dataset = pads.dataset(files, filesystem=fs, format="parquet", schema=SCHEMAS[wanted.set_name])
        key = (pc.field("source_id") == source_id) & (pc.field("segment_index") == segment_index)
        columns = ["source_id", "segment_index", *PROVENANCE_COLUMNS, *wanted.columns]
        for fragment in dataset.get_fragments():  # files in commit order: the newest current row wins
            for row in fragment.to_table(columns=columns, filter=key, schema=dataset.schema).to_pylist():
                if keep(fragment.path, row["source_id"], row["segment_index"]):
                    found = row, fragment.path
    if found is None:
        raise ConfigError(_no_row_message(root, source_id, segment_index, wanted.set_name))
    row, path = found
    return StoredCodes(
        codes=_pick(row, wanted),
        source_id=source_id,
        segment_index=segment_index,
        stream=stream,
        source_uri=row["source_uri"],
        segment_duration_s=float(row["segment_duration_s"]),
        path=path,
        record=_file_record(fs, path),
    )


def _file_record(fs: Any, path: str) -> dict[str, Any] | None:
    """The ``hummingml.run`` metadata of one Parquet file, or None when it has none."""
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        metadata = pq.read_schema(f).metadata or {}
    raw = metadata.get(b"hummingml.run")
    return json.loads(raw) if raw else None


def load_codec(
    models: str | os.PathLike[str] | ModelsConfig,
    record: dict[str, Any] | None = None,
    device: str = "auto",
) -> Any:
    """Load the DAC that decodes an output's codes, in eval mode on ``device``.

    Args:
        models: an extraction output root (the DAC its newest file records: kind, seed, and the cache or weights
            file when those paths exist here) or a :class:`ModelsConfig` (those weights).
        record: run metadata (``hummingml.run``) to check the weights against; for a root, its newest file's.
        device: ``"auto"`` (cuda when available) or a torch device.

    Returns:
        A ``dac.DAC``.

    Raises:
        hummingml.weights.config.ModelError: the weights are missing (and cannot be downloaded) or cannot be loaded.
        hummingml.eval.generate.CodecMismatchError: the loaded weights' sha256 differs from the one ``record`` names.
        ValueError: ``models`` is a path that holds no readable extraction output.
    """
    from hummingml.eval.generate import extraction_record, recorded_models_config

    if not isinstance(models, ModelsConfig):
        root = os.fspath(models)
        record = record if record is not None else extraction_record(root)
        if record is None:
            raise ValueError(f"{root} holds no readable extraction output (no committed audio-feature file)")
        models = recorded_models_config(record)
    from hummingml.weights.load import load_dac

    with warnings.catch_warnings():  # DAC's own use of deprecated torch APIs (jit.script, weight_norm)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")
        model, identity = load_dac(models)
    check_weights(identity, record)
    return model.to(resolve_device(device)).eval()


def check_weights(identity: ModelIdentity, record: dict[str, Any] | None) -> None:
    """Refuse DAC weights other than those the run metadata ``record`` names (no-op without a recorded DAC).

    Raises:
        hummingml.eval.generate.CodecMismatchError: naming both files.
    """
    from hummingml.eval.generate import CodecMismatchError, recorded_dac

    recorded = recorded_dac(record)
    if recorded is not None and recorded.get("sha256") != identity.sha256:
        raise CodecMismatchError(
            f"the DAC weights {identity.path} (sha256 {identity.sha256[:12]}…) are not the ones the output was "
            f"made with ({recorded.get('kind')} {recorded.get('name')}, sha256 {str(recorded.get('sha256'))[:12]}…); "
            "point --models-cache-dir or --models-dac-weights at those"
        )


def decode_codes(
    codes: npt.ArrayLike,
    models: str | os.PathLike[str] | ModelsConfig | None = None,
    *,
    model: Any = None,
    device: str = "auto",
) -> tuple[npt.NDArray[np.float32], int]:
    """Decode DAC codes to audio.

    Args:
        codes: integer codes ``(channels, n_codebooks, frames)``, or ``(n_codebooks, frames)`` for one channel, as
            stored in the feature sets (:attr:`StoredCodes.codes`); fewer codebooks than the DAC has are decoded
            with the coarsest ones only.
        models: which DAC, when ``model`` is not given: an extraction output root (the DAC it was made with, see
            :func:`load_codec`) or a :class:`ModelsConfig`.
        model: an already loaded ``dac.DAC`` (from :func:`load_codec`), to decode many clips without reloading.
        device: where a DAC loaded here runs (``"auto"``: cuda when available).

    Returns:
        ``(audio, sample_rate)``: float32 ``(channels, frames * hop)`` at the codec's rate (44 100 Hz for every DAC
        kind the extraction uses; ``hop`` is 512), not clipped.

    Raises:
        ValueError: neither ``models`` nor ``model`` given, or codes of the wrong shape or out of the codebook's
            range.
        hummingml.weights.config.ModelError, hummingml.eval.generate.CodecMismatchError: see :func:`load_codec`.
    """
    from hummingml.stages.codec import decode

    array = np.asarray(codes)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"codes must be integers (channels, n_codebooks, frames), got {array.dtype} {array.shape}")
    if model is None:
        if models is None:
            raise ValueError("decode_codes needs an output root or a ModelsConfig (models=), or a loaded DAC (model=)")
        model = load_codec(models, device=device)
    if array.shape[1] > int(model.n_codebooks):
        raise ValueError(f"codes have {array.shape[1]} codebooks, the DAC has {model.n_codebooks}")
    if array.min() < 0 or array.max() >= int(model.codebook_size):
        raise ValueError(f"codes must lie in [0, {model.codebook_size}) (got {array.min()}..{array.max()})")
    return decode(CodecTokens(array.astype(np.int16), frame_rate(model)), model)


def models_for(cfg: DecodeConfig, record: dict[str, Any] | None) -> ModelsConfig:
    """The DAC weights to decode with: the ones ``record`` names, with ``--models-*`` flags given in ``cfg`` on top.

    Raises:
        ConfigError: a flag that does not fit the recorded kind (``--models-dac-weights`` for random weights).
    """
    from hummingml.eval.generate import recorded_models_config

    flags = {"models_cache_dir": cfg.models_cache_dir, "models_dac_weights": cfg.models_dac_weights}
    return from_flags(ModelsConfig, argparse.Namespace(**flags), prefix="models_", base=recorded_models_config(record))


def run(cfg: DecodeConfig, log: TextIO | None = None) -> str:
    """Read the stream, load the output's DAC, decode, crop to the segment and write ``cfg.output``.

    The WAV is 16-bit at the codec's rate, clipped to [-1, 1], with the stream's channels; it is written under a
    temporary name and renamed, so a failed run leaves no file. Returns its path; a line saying what was written goes
    to ``log`` (standard output when None).

    Raises:
        ConfigError: see :func:`read_codes` and :func:`models_for`.
        hummingml.weights.config.ModelError, hummingml.eval.generate.CodecMismatchError: see :func:`load_codec`.
    """
    from hummingml.audio import write_pcm16

    stored = read_codes(cfg.root, cfg.source_id, cfg.segment, cfg.stream)
    model = load_codec(models_for(cfg, stored.record), stored.record, cfg.device)
    audio, rate = decode_codes(stored.codes, model=model)
    audio = audio[:, : round(stored.segment_duration_s * rate)]  # DAC decodes whole frames: drop the padding
    partial = f"{cfg.output}.partial-{os.getpid()}"
    try:
        write_pcm16(partial, audio, rate)
        os.replace(partial, cfg.output)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    random = bool((stored.record or {}).get("random_weights"))
    note = " (random-weight models: the audio carries no musical meaning)" if random else ""
    print(
        f"[decode] wrote {cfg.output}: {cfg.stream} of segment {cfg.segment} of {stored.source_uri}, "
        f"{audio.shape[0]} channel(s), {audio.shape[1] / rate:.2f} s at {rate} Hz{note}",
        file=log or sys.stdout,
    )
    return cfg.output

