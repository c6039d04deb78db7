"""``hummingml decode`` and the decode functions behind it: stream names, reading one current row, the DAC it was made
with, and the one-line errors.

Most tests write small outputs of their own through the extraction's store (``OutputStore.commit``: real Parquet
files and commit markers) with codes they choose, and decode them with the tiny DAC; one decodes a real extraction.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from hummingml.audio import FEATURE_SAMPLE_RATE, FRAME_HOP, STEMS
from hummingml.cli import main
from hummingml.config import ConfigError
from hummingml.eval.config import STREAM_FORMS, parse_stream
from hummingml.eval.decode import decode_codes, load_codec, read_codes
from hummingml.eval.generate import CodecMismatchError
from hummingml.extract.store import OutputStore
from hummingml.output import read_set
from hummingml.stages import codec
from hummingml.weights.config import ModelsConfig
from schemas.features import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "0123456789abcdef0123456789abcdef"
FRAMES = 12
N_CODEBOOKS = 4  # the tiny DAC's
SHORT_BY = 100  # the segment is this many 22.05 kHz samples shorter than its frames: decode must crop


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def stream_codes(name: str, channels: int = 1, salt: int = 0) -> list:
    """Codes that differ between streams (and between salts): int16 ``(channels, 4, FRAMES)`` as nested lists."""
    rng = np.random.default_rng([salt, *name.encode()])
    return rng.integers(0, 1024, size=(channels, N_CODEBOOKS, FRAMES), dtype=np.int16).tolist()


def feature_rows(segment: int, version: str, salt: int = 0, n_segments: int = 2) -> dict[str, pa.Table]:
    """The audio-feature and sine-audio-feature rows of one stereo segment of SOURCE, with mono stems, melody streams
    mono and vocals, and two mono variants."""
    duration_s = (FRAMES * FRAME_HOP - SHORT_BY) / FEATURE_SAMPLE_RATE
    provenance = {
        "source_id": SOURCE, "segment_index": segment, "source_uri": "/corpus/song.wav", "source_version": version,
        "content_sha256": "0" * 64, "source_sample_rate": 44_100, "source_channels": 2, "source_duration_s": 8.0,
        "segment_start_s": 4.0 * segment, "segment_duration_s": duration_s, "n_segments": n_segments,
        "sample_rate": FEATURE_SAMPLE_RATE, "frame_rate": FEATURE_SAMPLE_RATE / FRAME_HOP, "n_frames": FRAMES,
        "metadata": "{}",
    }  # fmt: skip
    audio = {
        **provenance,
        "channel_codes": stream_codes("mix", channels=2, salt=salt),
        "stem_names": list(STEMS),
        "stem_codes": [stream_codes(stem, salt=salt) for stem in STEMS],
    }
    variants = [
        {"gain_db": 0.0, "snr_db": 30.0, "eq_hz": 1000.0, "eq_db": 0.0, "eq_q": 1.0, "noise_seed": k,
         "codes": stream_codes(f"variant:{k}", salt=salt)}
        for k in range(2)
    ]  # fmt: skip
    melody = [
        {"stream": name, "notes": [], "midi": b"", "sine_codes": stream_codes(f"sine:{name}", salt=salt)}
        for name in ("mono", "vocals")
    ]
    sine = {**provenance, "mono_codes": stream_codes("mono", salt=salt), "mono_variants": variants, "melody": melody}
    return {
        "audio-feature": pa.Table.from_pylist([audio], schema=SCHEMAS["audio-feature"]),
        "sine-audio-feature": pa.Table.from_pylist([sine], schema=SCHEMAS["sine-audio-feature"]),
    }


def expected(name: str, salt: int = 0) -> np.ndarray:
    """The codes ``feature_rows`` stored for the stream ``name``."""
    if name in ("mix", "left", "right"):
        both = np.array(stream_codes("mix", channels=2, salt=salt), dtype=np.int16)
        return both if name == "mix" else both[[0 if name == "left" else 1]]
    return np.array(stream_codes(name, salt=salt), dtype=np.int16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[ModelsConfig, Any, dict[str, Any]]:
    """The tiny DAC in a private cache: (its config, the model, the run metadata an extraction with it records)."""
    import torch

    from hummingml.weights.load import load_dac

    cfg = ModelsConfig(kind="tiny", cache_dir=str(tmp_path_factory.mktemp("models")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only spin on a busy machine
    try:
        model, identity = load_dac(cfg)
    finally:
        torch.set_num_threads(threads)
    record = {"config": {"models": {"kind": "tiny", "seed": 0, "cache_dir": cfg.cache_dir}},
              "models": [identity.to_dict()], "random_weights": True}  # fmt: skip
    return cfg, model, record


@pytest.fixture(scope="module")
def output(tiny, tmp_path_factory) -> Path:
    """An output with segments 0 and 1 of SOURCE, and an error row for segment 0 of another source."""
    _, _, record = tiny
    root = tmp_path_factory.mktemp("decode") / "features"
    store = OutputStore(str(root), log=None)
    for segment in (0, 1):
        store.commit(feature_rows(segment, "1:1"), [(SOURCE, segment, 2, True, "1:1")], record)
    error = pa.Table.from_pylist(
        [{"source_id": "f" * 32, "segment_index": 0, "source_uri": "/corpus/bad.wav", "source_version": "2:2",
          "stage": "separate", "error_type": "RuntimeError", "message": "boom"}],
        schema=SCHEMAS["errors"],
    )  # fmt: skip
    store.commit({"errors": error}, [("f" * 32, 0, 1, False, "2:2")], record)
    return root


# --- stream names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "set_name", "columns"),
    [("mono", "sine-audio-feature", ("mono_codes",)), ("mix", "audio-feature", ("channel_codes",)),
     ("left", "audio-feature", ("channel_codes",)), ("right", "audio-feature", ("channel_codes",)),
     *[(stem, "audio-feature", ("stem_names", "stem_codes")) for stem in STEMS],
     ("sine:mono", "sine-audio-feature", ("melody",)), ("sine:chordal", "sine-audio-feature", ("melody",)),
     ("variant:0", "sine-audio-feature", ("mono_variants",)), ("variant:12", "sine-audio-feature", ("mono_variants",))],
)  # fmt: skip
def test_every_stream_name_maps_to_the_columns_that_hold_it(text: str, set_name: str, columns: tuple) -> None:
    stream = parse_stream(text)
    assert (stream.text, stream.set_name, stream.columns) == (text, set_name, columns)
    assert set(columns) <= set(SCHEMAS[set_name].names)


@pytest.mark.parametrize("text", ["flute", "Mono", "sine:flute", "sine:", "variant:-1", "variant:x", "variant", ""])
def test_an_unknown_stream_is_refused_with_the_forms_it_may_take(text: str) -> None:
    with pytest.raises(ValueError, match="unknown stream") as exc:
        parse_stream(text)
    assert all(form in str(exc.value) for form in STREAM_FORMS)


# --- reading one row -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mono", "mix", "left", "right", *STEMS, "sine:mono", "sine:vocals", "variant:0", "variant:1"]
)
def test_read_codes_returns_the_stored_codes_of_each_stream(output: Path, tiny, name: str) -> None:
    stored = read_codes(output, SOURCE, 1, name)
    np.testing.assert_array_equal(stored.codes, expected(name))
    assert stored.codes.dtype == np.int16
    assert (stored.source_id, stored.segment_index, stored.source_uri) == (SOURCE, 1, "/corpus/song.wav")
    assert stored.record == tiny[2]  # the run metadata of the file holding the row
    assert Path(stored.path).parent.name == parse_stream(name).set_name


def test_a_superseded_row_is_never_returned(tiny, tmp_path: Path) -> None:
    _, _, record = tiny
    store = OutputStore(str(tmp_path), log=None)
    store.commit(feature_rows(0, "1:1", salt=1), [(SOURCE, 0, 1, True, "1:1")], record)
    store.commit(feature_rows(0, "2:2", salt=2), [(SOURCE, 0, 1, True, "2:2")], record)  # the input changed
    # both rows are still in the files; the commit log makes the second one current
    assert len(list((tmp_path / "audio-feature").glob("*.parquet"))) == 2
    for name in ("vocals", "sine:mono"):
        np.testing.assert_array_equal(read_codes(tmp_path, SOURCE, 0, name).codes, expected(name, salt=2))
    current = read_set(str(tmp_path), "audio-feature", ["source_version"], log=None)
    assert current is not None and current["source_version"].to_pylist() == ["2:2"]


@pytest.mark.parametrize(
    ("source", "segment", "stream", "message"),
    [
        ("a" * 32, 0, "mono", "has no source 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' (2 sources"),
        (SOURCE, 2, "mono", "has 2 segments (0..1), not 2"),
        ("f" * 32, 0, "vocals", "failed during extraction"),
        (SOURCE, 0, "sine:lead", "no such melody stream; melody streams: sine:mono, sine:vocals"),
        (SOURCE, 0, "variant:2", "2 mono variant(s): variant:0..variant:1"),
        (SOURCE, 0, "trumpet", "unknown stream 'trumpet'"),
    ],
)
def test_a_missing_row_or_stream_is_a_config_error_saying_what_exists(
    output: Path, source: str, segment: int, stream: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        read_codes(output, source, segment, stream, log=None)


def test_a_folder_without_a_commit_log_is_no_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no extraction output"):
        read_codes(tmp_path, SOURCE, 0)
    assert _tree(tmp_path) == set()


# --- decoding --------------------------------------------------------------------------------------------------------


def test_decode_codes_is_the_codecs_decode_with_the_recorded_dac(output: Path, tiny, one_torch_thread) -> None:
    _, model, _ = tiny
    codes = expected("mix")
    audio, rate = decode_codes(codes, output, device="cpu")  # the DAC the output records
    reference, reference_rate = codec.decode(codec.CodecTokens(codes, codec.frame_rate(model)), model)
    assert audio.dtype == np.float32 and audio.shape == (2, FRAMES * int(model.hop_length))
    assert rate == reference_rate == 44_100
    np.testing.assert_allclose(audio, reference, atol=1e-5)
    one, _ = decode_codes(codes[0], model=model)  # (n_codebooks, frames): one channel
    np.testing.assert_allclose(one, reference[:1], atol=1e-5)
    coarse, _ = decode_codes(codes[:, :2], model=model)  # the two coarsest codebooks only
    assert coarse.shape == audio.shape and not np.allclose(coarse, audio)


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.full((1, N_CODEBOOKS, 3), 1024), r"must lie in \[0, 1024\)"),
        (np.full((1, N_CODEBOOKS, 3), -1), r"must lie in \[0, 1024\)"),
        (np.zeros((1, N_CODEBOOKS + 1, 3), dtype=np.int16), "5 codebooks, the DAC has 4"),
        (np.zeros((1, N_CODEBOOKS, 3), dtype=np.float32), "must be integers"),
        (np.zeros((N_CODEBOOKS,), dtype=np.int16), "must be integers"),
        (np.zeros((1, N_CODEBOOKS, 0), dtype=np.int16), "must be integers"),
    ],
)
def test_decode_codes_refuses_codes_the_dac_cannot_have_made(tiny, codes: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_codes(codes, model=tiny[1])


def test_decode_codes_needs_to_know_which_dac() -> None:
    with pytest.raises(ValueError, match="needs an output root or a ModelsConfig"):
        decode_codes(np.zeros((1, N_CODEBOOKS, 3), dtype=np.int16))


def test_load_codec_refuses_weights_other_than_the_recorded_ones(tiny, one_torch_thread) -> None:
    cfg, _, record = tiny
    other = json.loads(json.dumps(record))
    other["models"][0]["sha256"] = "0" * 64
    with pytest.raises(CodecMismatchError, match="are not the ones the output was made with"):
        load_codec(cfg, record=other, device="cpu")
    assert load_codec(cfg, record=record, device="cpu").n_codebooks == N_CODEBOOKS


# --- the command -----------------------------------------------------------------------------------------------------


def test_decode_writes_the_segment_as_a_wav(output: Path, tiny, tmp_path: Path, capsys, one_torch_thread) -> None:
    _, model, _ = tiny
    wav = tmp_path / "mix.wav"
    assert main(["decode", str(output), "--source-id", SOURCE, "--segment", "1", "--stream", "mix", "-o", str(wav),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert str(wav) in capsys.readouterr().out
    written, rate = sf.read(wav, dtype="float32", always_2d=True)
    decoded, _ = codec.decode(codec.CodecTokens(expected("mix"), codec.frame_rate(model)), model)
    n_out = 2 * (FRAMES * FRAME_HOP - SHORT_BY)  # the segment's length at 44.1 kHz: the padding frame part dropped
    assert (rate, written.shape) == (44_100, (n_out, 2))
    np.testing.assert_allclose(written.T, np.clip(decoded[:, :n_out], -1, 1), atol=1 / 32_000)  # 16-bit
    assert sf.info(wav).subtype == "PCM_16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.wav"]  # no temporary file left


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--segment", "0"], "--source-id is required"),
        (["--source-id", SOURCE, "--segment", "-1"], "--segment must be >= 0"),
        (["--source-id", SOURCE, "--stream", "flute"], "--stream: unknown stream 'flute'"),
        (["--source-id", SOURCE, "--stream", "variant:x"], "--stream: unknown stream 'variant:x'"),
        (["--source-id", SOURCE, "--device", "GPU!"], "--device must be auto or a torch device"),
        (["--source-id", SOURCE, "-o", "x.mp3"], "-o/--output must name a .wav file"),
        (["--source-id", SOURCE, "-o", "missing/x.wav"], "the folder .*missing does not exist"),
        (["--source-id", "a" * 32], "has no source 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'"),
        (["--source-id", SOURCE, "--segment", "5"], r"has 2 segments \(0\.\.1\), not 5"),
        (["--source-id", SOURCE, "--stream", "sine:bass"], "the row has no such melody stream"),
        (["--source-id", SOURCE, "--models-dac-weights", "dac.pth"], "--models-dac-weights .* pretrained only"),
    ],
)
def test_a_bad_flag_exits_2_with_one_line_and_writes_nothing(
    output: Path, tmp_path: Path, monkeypatch, capsys, flags: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["decode", str(output), *flags] + ([] if "-o" in flags else ["-o", "x.wav"])
    before = _tree(tmp_path), _tree(output)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2
    assert len(err) == 1 and err[0].startswith("hummingml decode: error: "), err
    assert re.search(message, err[0]), err
    assert (_tree(tmp_path), _tree(output)) == before


def test_no_output_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process: a folder that holds no output."""
    (tmp_path / "empty").mkdir()
    before = _tree(tmp_path)
    argv = ["decode", "empty", "--source-id", SOURCE, "-o", "x.wav"]
    done = subprocess.run([sys.executable, "-m", "hummingml.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 2
    message = "hummingml decode: error: empty holds no extraction output (no _commits folder)"
    assert done.stderr.splitlines() == [message]
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_missing_weights_exit_1_with_one_line_and_write_nothing(output: Path, tiny, tmp_path: Path) -> None:
    """An output made with pretrained weights that this machine lacks and cannot download: exit 1, no WAV."""
    _, _, record = tiny
    root = tmp_path / "pretrained-out"
    pretrained = {**record, "config": {"models": {"kind": "pretrained", "seed": 0, "cache_dir": str(tmp_path)}}}
    OutputStore(str(root), log=None).commit(feature_rows(0, "1:1"), [(SOURCE, 0, 1, True, "1:1")], pretrained)
    (tmp_path / "home").mkdir()
    with socket.socket() as sock:  # a proxy port that refuses connections: offline at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path / "home"), "HTTPS_PROXY": f"127.0.0.1:{port}"}
    env.pop("HUMMINGML_CACHE", None)
    before = _tree(tmp_path)
    argv = ["decode", str(root), "--source-id", SOURCE, "--stream", "vocals", "-o", str(tmp_path / "x.wav")]
    done = subprocess.run([sys.executable, "-m", "hummingml.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1 and lines[0].startswith("hummingml decode: error: The pretrained DAC 44 kHz weights are "
                                                   "not on this machine"), lines  # fmt: skip
    assert "--dac-weights" in lines[0] and done.stdout == ""
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_decode_of_a_real_extraction(demo_features: Path, tmp_path: Path) -> None:
    """The command in a fresh process on the shared demo extraction (tiny models): every stream kind of one row."""
    table = read_set(str(demo_features), "audio-feature", ["source_id", "segment_index", "segment_duration_s",
                                                           "source_channels"], log=None)  # fmt: skip
    assert table is not None
    row = table.slice(0, 1).to_pylist()[0]
    wav = tmp_path / "vocals.wav"
    argv = ["decode", str(demo_features), "--source-id", row["source_id"], "--segment", str(row["segment_index"]),
            "--stream", "vocals", "-o", str(wav)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "hummingml.cli", *argv], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "random-weight models" in done.stdout
    info = sf.info(wav)
    assert (info.samplerate, info.channels) == (44_100, 1)
    assert info.frames == round(row["segment_duration_s"] * 44_100)
    for name, channels in [("mix", row["source_channels"]), ("left", 1), ("mono", 1), ("sine:mono", 1),
                           ("sine:vocals", 1), ("variant:0", 1), *[(stem, 1) for stem in STEMS]]:  # fmt: skip
        stored = read_codes(demo_features, row["source_id"], row["segment_index"], name, log=None)
        assert stored.codes.shape[:2] == (channels, N_CODEBOOKS), name
