"""The OpenVINO encoder gives the eager PyTorch reference's codes, and its IR is converted once per weights file."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hummingml.audio import FEATURE_SAMPLE_RATE
from hummingml.extract.config import ExtractConfig
from hummingml.stages.codec import Codec, CodecConfig, resolve_backend
from hummingml.testing.corpus import STEMS, make_song
from hummingml.testing.signals import sine
from hummingml.weights import openvino
from hummingml.weights.config import ModelsConfig


def _config(cache: Path, backend: str) -> CodecConfig:
    return CodecConfig(device="cpu", backend=backend, models=ModelsConfig(kind="tiny", cache_dir=str(cache)))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Codec, Codec]:
    """(the torch reference, the OpenVINO encoder) over the same tiny DAC weights."""
    cache = tmp_path_factory.mktemp("models")
    return Codec(_config(cache, "torch")), Codec(_config(cache, "openvino"))


def test_auto_is_openvino_on_a_cpu_and_torch_elsewhere() -> None:
    assert resolve_backend("auto", "cpu") == "openvino"
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="runs on a CPU"):
        resolve_backend("openvino", "cuda:0")


def test_the_backends_give_the_same_codes_on_the_corpus(pair) -> None:
    reference, compiled = pair
    assert (reference.backend, compiled.backend) == ("torch", "openvino")
    total = 0
    for index in range(3):
        song = make_song(index, seed=5, seconds=4.0)
        for audio in [song.mix, *(song.stems[s] for s in STEMS), song.mix[:, :1000]]:
            a = reference.encode(audio, 44_100).codes
            np.testing.assert_array_equal(a, compiled.encode(audio, 44_100).codes)
            total += a.size
    assert total > 20_000


def test_the_backends_agree_in_batches_of_mixed_lengths(pair) -> None:
    reference, compiled = pair
    clips = [sine(220.0 * (1 + k), seconds=0.3 + 0.7 * k, sample_rate=FEATURE_SAMPLE_RATE, channels=1 + k % 2)
             for k in range(4)]
    expected = reference.encode_batch(clips, FEATURE_SAMPLE_RATE)
    for a, b in zip(expected, compiled.encode_batch(clips, FEATURE_SAMPLE_RATE), strict=True):
        np.testing.assert_array_equal(a.codes, b.codes)


def test_the_ir_is_converted_once_and_reused(tmp_path) -> None:
    first = Codec(_config(tmp_path, "openvino"))
    ir = Path(first.encoder.source)  # type: ignore[union-attr]
    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    assert ir.is_relative_to(tmp_path / "openvino")
    stamp = ir.stat().st_mtime_ns
    second = Codec(_config(tmp_path, "openvino"))
    assert second.encoder.source == str(ir)  # type: ignore[union-attr]
    assert ir.stat().st_mtime_ns == stamp
    assert [p.name for p in ir.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_processes_starting_together_convert_once(tmp_path, monkeypatch) -> None:
    reference = Codec(_config(tmp_path, "torch"))
    conversions: list[int] = []
    convert = openvino._convert

    def counted(model):
        conversions.append(1)
        return convert(model)

    monkeypatch.setattr(openvino, "_convert", counted)
    sha = reference.identity.sha256  # type: ignore[union-attr]
    threads = [threading.Thread(target=openvino.OpenVINOEncoder, args=(reference.model, 1, tmp_path, sha))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(conversions) == 1
    assert openvino.ir_path(tmp_path, sha).is_file()


def test_an_injected_model_is_converted_in_memory(pair) -> None:
    reference, _ = pair
    injected = Codec(CodecConfig(device="cpu", backend="openvino"), model=reference.model)
    assert injected.encoder.source == "memory"  # type: ignore[union-attr]
    audio = sine(330.0, seconds=1.0, sample_rate=FEATURE_SAMPLE_RATE)
    np.testing.assert_array_equal(injected.encode(audio, FEATURE_SAMPLE_RATE).codes,
                                  reference.encode(audio, FEATURE_SAMPLE_RATE).codes)


def test_without_openvino_auto_falls_back_and_openvino_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # an import of it now raises ImportError
    assert not openvino.available()
    assert resolve_backend("auto", "cpu") == "torch"
    assert Codec(_config(tmp_path, "auto")).encoder is None
    with pytest.raises(ImportError, match=r"openvino is not installed.*--codec-backend torch"):
        Codec(_config(tmp_path, "openvino"))


@pytest.mark.parametrize(
    ("codec", "message"),
    [(CodecConfig(backend="onnx"), "--codec-backend: unknown 'onnx'"),
     (CodecConfig(backend="openvino", device="cuda"), "--codec-backend openvino runs on a CPU")],
)
def test_a_bad_backend_is_refused_at_parse_time(codec, message) -> None:
    assert any(message in p for p in ExtractConfig(input="in", output="out", codec=codec).problems())
