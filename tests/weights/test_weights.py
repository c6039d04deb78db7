from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from hummingml.audio import STEMS
from hummingml.cli import build_parser, main
from hummingml.stages.separate import HTDEMUCS_6S_SOURCES
from hummingml.weights import config as weights_config
from hummingml.weights import load
from hummingml.weights.config import ChecksumMismatchError, ModelLoadError, ModelsConfig, ModelUnavailableError
from hummingml.weights.load import load_dac, load_demucs, prepare, sha256_file


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty library caches: every socket connection fails at once, HOME and the HF cache are empty."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def tiny(tmp_path: Path, **kwargs) -> ModelsConfig:
    return ModelsConfig(kind="tiny", cache_dir=str(tmp_path / "cache"), **kwargs)


def test_tiny_prepare_is_deterministic_and_seeded(tmp_path) -> None:
    a = prepare(ModelsConfig(cache_dir=str(tmp_path / "a")))
    b = prepare(ModelsConfig(cache_dir=str(tmp_path / "b")))
    c = prepare(ModelsConfig(cache_dir=str(tmp_path / "c"), seed=1))
    assert [i.sha256 for i in a] == [i.sha256 for i in b]  # torch.save output is byte-stable for a seed
    assert [sha256_file(i.path) for i in a] == [i.sha256 for i in a]
    assert all(x.sha256 != y.sha256 for x, y in zip(a, c, strict=True))


def test_tiny_models_load_through_the_library_loaders(tmp_path) -> None:
    import dac
    from demucs.pretrained import get_model

    cfg = tiny(tmp_path)
    codec, dac_id = load_dac(cfg)
    separator, demucs_id = load_demucs(cfg)
    assert isinstance(codec, dac.DAC) and codec.n_codebooks == 4 and codec.sample_rate == 44_100
    assert list(separator.sources) == list(STEMS)
    for identity, library in ((dac_id, "descript-audio-codec"), (demucs_id, "demucs")):
        d = identity.to_dict()
        assert d["random_weights"] is True and d["kind"] == "tiny" and d["seed"] == 0
        assert d["library"] == library and d["library_version"] != "not installed"
        assert Path(d["path"]).is_file() and len(d["sha256"]) == 64 and d["n_params"] > 0
        json.dumps(d)
    assert isinstance(dac.utils.load_model(load_path=dac_id.path), dac.DAC)
    assert list(get_model(demucs_id.name, repo=Path(demucs_id.path).parent).sources) == list(STEMS)


def test_cache_dir_comes_from_the_environment_unless_given(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HUMMINGML_CACHE", str(tmp_path / "env"))
    assert weights_config.cache_dir(ModelsConfig()) == tmp_path / "env"
    assert weights_config.cache_dir(ModelsConfig(cache_dir=str(tmp_path / "flag"))) == tmp_path / "flag"
    monkeypatch.delenv("HUMMINGML_CACHE")
    assert weights_config.cache_dir(ModelsConfig()) == Path("~/.cache/hummingml/models").expanduser()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "huge"},
        {"dac_weights": "/x.pth"},
        {"demucs_repo": "/x"},
        {"dac_sha256": "abc"},
        {"demucs_sha256": "z" * 64},
    ],
)
def test_invalid_configs_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        ModelsConfig(**kwargs)


def test_pinned_sha256_refuses_a_different_file(tmp_path) -> None:
    ids = prepare(tiny(tmp_path))
    assert load_dac(tiny(tmp_path, dac_sha256=ids[0].sha256))[1].sha256 == ids[0].sha256
    assert load_demucs(tiny(tmp_path, demucs_sha256=ids[1].sha256))[1].sha256 == ids[1].sha256
    with pytest.raises(ChecksumMismatchError, match=r"sha256 [0-9a-f]{64}, but 0{64} is pinned"):
        load_dac(tiny(tmp_path, dac_sha256="0" * 64))
    with pytest.raises(ChecksumMismatchError, match="pinned"):
        load_demucs(tiny(tmp_path, demucs_sha256="f" * 64))


def test_corrupt_or_truncated_weights_give_a_clear_error(tmp_path) -> None:
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelLoadError, match="corrupt, truncated or not a DAC weights file"):
        load_dac(ModelsConfig(kind="pretrained", dac_weights=str(garbage)))
    ids = prepare(tiny(tmp_path))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(ids[0].path).read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        load_dac(ModelsConfig(kind="pretrained", dac_weights=str(truncated)))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "htdemucs_6s.th").write_bytes(b"\x00" * 1000)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_demucs(ModelsConfig(kind="pretrained", demucs_repo=str(repo)))


def test_missing_explicit_paths_are_named(tmp_path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_dac(ModelsConfig(kind="pretrained", dac_weights=str(tmp_path / "nope.pth")))
    (tmp_path / "repo").mkdir()
    with pytest.raises(ModelUnavailableError, match=r"no htdemucs_6s\.th and no htdemucs_6s\.yaml.*copy .*remote"):
        load_demucs(ModelsConfig(kind="pretrained", demucs_repo=str(tmp_path / "repo")))


def test_pretrained_offline_fails_fast_with_one_helpful_error(offline, tmp_path) -> None:
    cfg = ModelsConfig(kind="pretrained", cache_dir=str(tmp_path / "cache"))
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as dac_error:
        prepare(cfg)
    with pytest.raises(ModelUnavailableError) as demucs_error:
        load_demucs(cfg)
    assert time.perf_counter() - start < 5.0
    for error in (dac_error, demucs_error):
        message = str(error.value)
        assert "--dac-weights" in message and "--demucs-repo" in message and "models prepare" in message


def test_a_hanging_network_is_given_up_after_the_timeout(monkeypatch, tmp_path) -> None:
    """A blackholed route (connect never answers) costs connect_timeout_s, not the libraries' retries."""

    def hang(*args, **kwargs):
        time.sleep(30)
        raise TimeoutError("timed out")  # what a real connect to a blackholed route ends with

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match=r"unreachable within 0\.5 s"):
        load_dac(ModelsConfig(kind="pretrained", cache_dir=str(tmp_path / "c"), connect_timeout_s=0.5))
    assert time.perf_counter() - start < 5.0


def test_reachable_probes_loopback_only() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert load.reachable("127.0.0.1", port, 2.0)
    server.close()
    assert not load.reachable("127.0.0.1", port, 2.0)  # closed port: refused at once


def _fake_hub(tmp_path: Path):
    """hf_hub_download stand-in serving a small htdemucs_6s-shaped model in demucs's hub format."""
    import torch
    import yaml
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {"sources": list(HTDEMUCS_6S_SOURCES), **load.TINY_DEMUCS_KWARGS}
    model = HTDemucs(**kwargs)
    files = tmp_path / "hub"
    files.mkdir()
    (files / "htdemucs_6s.yaml").write_text(yaml.safe_dump({"models": ["abcd1234"]}))
    meta = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(kwargs)}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(files / "abcd1234.safetensors"), meta)
    calls = []

    def hf_hub_download(repo_id, filename, local_files_only=False):
        calls.append((repo_id, filename, local_files_only))
        if local_files_only:
            raise FileNotFoundError(filename)
        return str(files / filename)

    return hf_hub_download, calls


def test_pretrained_prepare_fills_a_copyable_cache(monkeypatch, tmp_path) -> None:
    """The download path with the libraries' download functions replaced by local fakes; then offline reuse."""
    import dac
    import huggingface_hub

    tiny_ids = prepare(tiny(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def download(model_type, model_bitrate, tag):
        target = tmp_path / "home" / ".cache" / "descript" / "dac" / f"weights_{model_type}_{model_bitrate}_{tag}.pth"
        target.parent.mkdir(parents=True)
        target.write_bytes(Path(tiny_ids[0].path).read_bytes())
        return target

    hf_hub_download, calls = _fake_hub(tmp_path)
    monkeypatch.setattr(dac.utils, "download", download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(load, "reachable", lambda *a: True)
    cfg = ModelsConfig(kind="pretrained", cache_dir=str(tmp_path / "cache"))
    dac_id, demucs_id = prepare(cfg)
    assert ("adefossez/HTDemucs-6s", "abcd1234.safetensors", False) in calls
    assert dac_id.random_weights is False and dac_id.sha256 == tiny_ids[0].sha256
    assert Path(dac_id.path) == tmp_path / "cache" / "pretrained" / "dac" / weights_config.DAC_PRETRAINED_FILE
    assert Path(demucs_id.path) == tmp_path / "cache" / "pretrained" / "demucs" / "abcd1234.th"

    # offline afterwards, with only the copied cache: no probe, no download
    monkeypatch.setattr(load, "reachable", lambda *a: pytest.fail("probed the network"))
    (tmp_path / "home").rename(tmp_path / "gone")
    copied = tmp_path / "elsewhere"
    (tmp_path / "cache").rename(copied)
    moved = ModelsConfig(kind="pretrained", cache_dir=str(copied), demucs_sha256=demucs_id.sha256)
    model, identity = load_demucs(moved)
    assert list(model.sources) == list(HTDEMUCS_6S_SOURCES) and identity.sha256 == demucs_id.sha256
    assert load_dac(moved)[1].sha256 == dac_id.sha256
    listed = {(i.kind, i.library): i.sha256 for i in load.list_cached(copied)}
    assert listed[("pretrained", "demucs")] == demucs_id.sha256
    assert listed[("pretrained", "descript-audio-codec")] == dac_id.sha256


def test_explicit_demucs_repo_in_the_official_layout(tmp_path) -> None:
    """A repo as demucs --repo expects it: <sig>-<hash>.th plus the bag yaml."""
    import shutil

    import yaml

    ids = prepare(tiny(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(ids[1].path, repo / "htdemucs_tiny-0123abcd.th")
    (repo / "mybag.yaml").write_text(yaml.safe_dump({"models": ["htdemucs_tiny"]}))
    with pytest.raises(ModelLoadError):  # demucs checks the <hash> suffix against the file's sha256
        load_demucs(ModelsConfig(kind="pretrained", demucs_repo=str(repo), demucs_name="mybag"))
    (repo / "htdemucs_tiny-0123abcd.th").rename(repo / f"htdemucs_tiny-{ids[1].sha256[:8]}.th")
    model, identity = load_demucs(ModelsConfig(kind="pretrained", demucs_repo=str(repo), demucs_name="mybag"))
    assert identity.sha256 == ids[1].sha256 and identity.random_weights is False
    assert list(model.sources) == list(STEMS)


def test_cli_prepare_and_list(tmp_path, capsys) -> None:
    cache = str(tmp_path / "cache")
    assert main(["models", "prepare", "--kind", "tiny", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "dac_tiny" in out and "htdemucs_tiny" in out
    assert main(["models", "list", "--cache-dir", cache, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {d["name"] for d in listed} == {"dac_tiny", "htdemucs_tiny"}
    assert all(d["random_weights"] for d in listed)


def test_cli_offline_prepare_prints_one_error(offline, tmp_path, capsys) -> None:
    assert main(["models", "prepare", "--kind", "pretrained", "--cache-dir", str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    assert out.count("error:") == 1 and "--dac-weights" in out and "--demucs-repo" in out


def test_every_models_flag_has_help() -> None:
    parser = build_parser()
    models_parser = parser._subparsers._group_actions[0].choices["models"]
    for name, sub in models_parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"models {name} {action.option_strings} has no help"
