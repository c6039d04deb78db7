"""Creating, fetching, checking and loading the DAC and Demucs weights of each kind.

Three kinds of weights, chosen by ``ModelsConfig.kind`` (:mod:`hummingml.weights.config`):

- ``tiny``: small, seeded, randomly initialised DAC and 6-source HTDemucs. Fast; for tests and pipeline smoke runs.
- ``random-full``: the real architectures at full size (DAC 44 kHz, htdemucs-sized HTDemucs) with seeded random
  weights. The compute cost is real, the output is meaningless; for benchmarks.
- ``pretrained``: the official DAC 44 kHz (8 kbps, 9 codebooks) and ``htdemucs_6s`` weights, from explicit local
  paths, from the cache, or downloaded with the libraries' own functions (``dac.utils.download`` and the Hugging Face
  hub files that ``demucs.pretrained.get_model`` reads).

Every kind is written to disk and loaded through the libraries' own loaders: ``dac.utils.load_model(load_path=...)``
and ``demucs.pretrained.get_model(name, repo=...)``. Cache layout under ``cache_dir(cfg)``::

    tiny/seed<S>/dac_tiny.pth                          DAC weights file ({"state_dict", "metadata"})
    tiny/seed<S>/demucs/htdemucs_tiny.th               Demucs package ({"klass", "args", "kwargs", "state"})
    random-full/seed<S>/dac_44khz_random.pth
    random-full/seed<S>/demucs/htdemucs_6s_random.th
    pretrained/dac/weights_44khz_8kbps_0.0.1.pth       copy of the official file
    pretrained/demucs/htdemucs_6s.yaml, <sig>.th       a Demucs model repo (``--repo`` layout)
    openvino/<version>/dac_encoder_<sha256[:16]>.xml   the DAC encoder as OpenVINO IR (hummingml.weights.openvino)

Every loaded model comes with a ``ModelIdentity`` (sha256 of its file, library version, random or not).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hummingml.audio import STEMS
from hummingml.weights.config import (
    CACHE_ENV,
    DAC_BITRATE,
    DAC_MODEL_TYPE,
    DAC_PRETRAINED_FILE,
    DAC_TAG,
    ChecksumMismatchError,
    ModelError,
    ModelIdentity,
    ModelLoadError,
    ModelsConfig,
    ModelUnavailableError,
    cache_dir,
)

DAC_HOST = ("github.com", 443)  # dac.utils.download fetches GitHub release assets
HF_HOST = ("huggingface.co", 443)  # demucs.pretrained.get_model reads the Hugging Face hub

TINY_DAC_KWARGS: dict[str, Any] = {
    "encoder_dim": 16, "decoder_dim": 64, "n_codebooks": 4, "codebook_size": 1024, "sample_rate": 44_100,
}  # 1.6 M params, the 44 kHz model's strides (hop 512)
FULL_DAC_KWARGS: dict[str, Any] = {}  # dac.DAC() defaults: the 44 kHz model, 76.7 M params, 9 codebooks
TINY_DEMUCS_KWARGS: dict[str, Any] = {"channels": 8, "depth": 4, "t_layers": 1, "t_heads": 2, "segment": 2}
# htdemucs settings of demucs/grids/mmi.py (the Hybrid Transformer Demucs grid) with htdemucs's 7.8 s segment; the
# published checkpoint's exact kwargs live inside its file, so this is the architecture, not a byte-identical copy.
FULL_DEMUCS_KWARGS: dict[str, Any] = {"depth": 4, "dconv_mode": 3, "t_layers": 5, "segment": Fraction(39, 5)}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def combined_sha256(paths: list[Path]) -> str:
    """sha256 of one file; for several, the sha256 of their hex digests joined by newlines, in the given order."""
    digests = [sha256_file(p) for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{module} is not installed; run the project's install script (./install.sh, see README 'Install')"
        ) from exc


def _check_pin(paths: list[Path], pinned: str | None, what: str) -> str:
    digest = combined_sha256(paths)
    if pinned is not None and digest != pinned.lower():
        raise ChecksumMismatchError(
            f"{what} at {', '.join(map(str, paths))} has sha256 {digest}, but {pinned.lower()} is pinned; "
            "the file was not loaded. Point to the pinned file or change the pin."
        )
    return digest


def _n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for a block and restore its previous state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def atomic_write(path: Path, write: Callable[[Path], object], companions: tuple[str, ...] = ()) -> None:
    """Write ``path`` through ``write(p)`` (its return value is ignored) then rename, so concurrent readers never see
    half a file.

    ``p`` has ``path``'s file name, in a private staging directory beside it: torch.save records the file's stem
    inside the archive, so the bytes must be written under the final name. ``companions`` are suffixes of files that
    ``write`` also makes beside ``p`` (an OpenVINO model's ``.bin`` beside its ``.xml``); they are renamed first, so
    a reader that finds ``path`` finds them too.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.d")
    staging.mkdir(exist_ok=True)
    try:
        write(staging / path.name)
        for suffix in companions:
            os.replace(staging / path.with_suffix(suffix).name, path.with_suffix(suffix))
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- network -----------------------------------------------------------------------------------------------------


def _probe_target(host: str, port: int) -> tuple[str, int]:
    """The address a download would connect to first: the HTTPS proxy when one is set, else the host."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return host, port


def reachable(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to ``host:port`` (or the HTTPS proxy) opens within ``timeout_s`` seconds.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread that is abandoned after
    ``timeout_s``.
    """
    target = _probe_target(host, port)
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection(target, timeout=timeout_s).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=attempt, daemon=True, name=f"probe-{target[0]}")
    thread.start()
    thread.join(timeout_s)
    return bool(opened)


def _offline_error(what: str, reason: str, cfg: ModelsConfig) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"The {what} are not on this machine and cannot be downloaded ({reason}). Pass local files instead: "
        f"--dac-weights PATH (the DAC 44 kHz file {DAC_PRETRAINED_FILE}) and --demucs-repo DIR (a Demucs model repo "
        f"holding {cfg.demucs_name}.yaml and its <sig>.th files), or run `hummingml models prepare --kind pretrained` "
        f"on a machine with internet and copy its cache directory to {cache_dir(cfg)} (--cache-dir or ${CACHE_ENV}). "
        "--kind tiny and --kind random-full need no download (random weights)."
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# --- DAC ---------------------------------------------------------------------------------------------------------


def _load_dac_file(path: Path, pinned: str | None) -> tuple[Any, str]:
    """Check the pin, then load with ``dac.utils.load_model(load_path=...)``; returns ``(model, sha256)``."""
    dac = _require("dac")
    if not path.is_file():
        raise ModelUnavailableError(f"DAC weights file {path} does not exist (--dac-weights PATH)")
    digest = _check_pin([path], pinned, "DAC weights")
    try:
        model = dac.utils.load_model(load_path=str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load DAC weights from {path} (sha256 {digest}): {type(exc).__name__}: {exc}. "
            "The file is corrupt, truncated or not a DAC weights file; delete it and prepare or download it again."
        ) from exc
    if not isinstance(model, dac.DAC):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a dac.DAC")
    return model.eval(), digest


def _random_dac_path(cfg: ModelsConfig) -> Path:
    name = "dac_tiny.pth" if cfg.kind == "tiny" else "dac_44khz_random.pth"
    return cache_dir(cfg) / cfg.kind / f"seed{cfg.seed}" / name


def _write_random_dac(cfg: ModelsConfig, path: Path) -> None:
    dac = _require("dac")
    kwargs = TINY_DAC_KWARGS if cfg.kind == "tiny" else FULL_DAC_KWARGS
    with _seeded(cfg.seed):
        model = dac.DAC(**kwargs)
    # package=False writes {"state_dict", "metadata"}: the layout of the official weights file
    atomic_write(path, lambda p: model.save(str(p), package=False))


def _library_dac_cache() -> Path:
    """Where ``dac.utils.download`` keeps the 44 kHz weights (``~/.cache/descript/dac``)."""
    return Path.home() / ".cache" / "descript" / "dac" / DAC_PRETRAINED_FILE


def _pretrained_dac_path(cfg: ModelsConfig) -> Path:
    if cfg.dac_weights:
        return Path(cfg.dac_weights).expanduser()
    for candidate in (cache_dir(cfg) / "pretrained" / "dac" / DAC_PRETRAINED_FILE, _library_dac_cache()):
        if candidate.is_file():
            return candidate
    if not reachable(*DAC_HOST, cfg.connect_timeout_s):
        raise _offline_error(
            "pretrained DAC 44 kHz weights", f"{DAC_HOST[0]} unreachable within {cfg.connect_timeout_s:g} s", cfg
        )
    dac = _require("dac")
    try:
        return Path(dac.utils.download(model_type=DAC_MODEL_TYPE, model_bitrate=DAC_BITRATE, tag=DAC_TAG))
    except Exception as exc:
        raise _offline_error("pretrained DAC 44 kHz weights", f"download failed: {exc}", cfg) from exc


def load_dac(cfg: ModelsConfig) -> tuple[Any, ModelIdentity]:
    """Load the DAC model that ``cfg`` names, in eval mode on the CPU.

    tiny / random-full weights are created in the cache on first use (deterministic for a seed). Pretrained weights
    come from ``cfg.dac_weights``, the cache, ``dac.utils.download``'s cache, or a download.

    Returns:
        ``(model, identity)`` with ``model`` a ``dac.DAC``.

    Raises:
        ModelUnavailableError: pretrained weights are missing and cannot be downloaded (fails within
            ``connect_timeout_s``), or ``dac_weights`` does not exist.
        ChecksumMismatchError: the file's sha256 differs from ``cfg.dac_sha256``.
        ModelLoadError: the file is corrupt or not DAC weights.
    """
    if cfg.kind == "pretrained":
        path = _pretrained_dac_path(cfg)
    else:
        path = _random_dac_path(cfg)
        if not path.is_file():
            _write_random_dac(cfg, path)
    model, digest = _load_dac_file(path, cfg.dac_sha256)
    identity = ModelIdentity(
        kind=cfg.kind,
        name=path.stem,
        sha256=digest,
        library="descript-audio-codec",
        library_version=_version("descript-audio-codec"),
        path=str(path),
        random_weights=cfg.kind != "pretrained",
        seed=cfg.seed if cfg.kind != "pretrained" else None,
        n_params=_n_params(model),
    )
    return model, identity


# --- Demucs ------------------------------------------------------------------------------------------------------


def _random_demucs_repo(cfg: ModelsConfig) -> tuple[Path, str]:
    name = "htdemucs_tiny" if cfg.kind == "tiny" else "htdemucs_6s_random"
    return cache_dir(cfg) / cfg.kind / f"seed{cfg.seed}" / "demucs", name


def save_demucs_package(model: Any, path: Path) -> None:
    """Write one Demucs model as ``torch.save({"klass", "args", "kwargs", "state"})``, the layout of a ``.th`` file
    in a Demucs repo (what ``demucs.states.load_model`` reads). Written atomically."""
    import torch
    from demucs.states import get_state

    args, kwargs = model._init_args_kwargs  # recorded by demucs.states.capture_init
    package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": get_state(model, None)}

    atomic_write(path, lambda p: torch.save(package, p))


def _write_random_demucs(cfg: ModelsConfig, repo: Path, name: str) -> None:
    from demucs.htdemucs import HTDemucs

    kwargs = TINY_DEMUCS_KWARGS if cfg.kind == "tiny" else FULL_DEMUCS_KWARGS
    with _seeded(cfg.seed):
        model = HTDemucs(sources=list(STEMS), **kwargs)
    save_demucs_package(model, repo / f"{name}.th")


def demucs_files(repo: Path, name: str) -> list[Path]:
    """The ``.th`` files that ``get_model(name, repo=repo)`` would read, in bag order.

    Raises:
        ModelUnavailableError: ``repo`` holds neither ``<name>.th`` / ``<name>-<hash>.th`` nor ``<name>.yaml`` with all
            of its signatures.
    """
    import yaml

    if not repo.is_dir():
        raise ModelUnavailableError(f"Demucs repo {repo} is not a directory (--demucs-repo DIR)")
    th = {p.stem.rsplit("-", 1)[0]: p for p in repo.glob("*.th")}
    if name in th:
        return [th[name]]
    bag_file = repo / f"{name}.yaml"
    if not bag_file.is_file():
        shipped = Path(_require("demucs").__file__).parent / "remote" / f"{name}.yaml"
        hint = f"; the demucs package ships this file: copy {shipped} there" if shipped.is_file() else ""
        raise ModelUnavailableError(f"Demucs repo {repo} has no {name}.th and no {name}.yaml{hint}")
    try:
        signatures = list(yaml.safe_load(bag_file.read_text())["models"])
    except Exception as exc:
        raise ModelLoadError(f"{bag_file} is not a Demucs bag file (a YAML mapping with 'models:'): {exc}") from exc
    missing = [sig for sig in signatures if sig not in th]
    if missing:
        raise ModelUnavailableError(f"Demucs repo {repo}: {name}.yaml lists {missing}, but no <sig>.th file for them")
    return [th[sig] for sig in signatures]


def _fetch_demucs_from_hub(name: str, dest: Path, local_files_only: bool) -> None:
    """Fetch ``name`` with the same hub files ``demucs.pretrained.get_model`` reads (``demucs.hf``), and write it to
    ``dest`` as a Demucs model repo: ``<name>.yaml`` plus one ``<sig>.th`` per model of the bag."""
    import huggingface_hub
    import yaml
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name, load_safetensors_model

    namespace, short = name.split("/", 1) if "/" in name else (DEFAULT_NAMESPACE, name)
    repo_id = f"{namespace}/{hf_repo_name(short)}"
    bag_path = Path(huggingface_hub.hf_hub_download(repo_id, f"{short}.yaml", local_files_only=local_files_only))
    for sig in yaml.safe_load(bag_path.read_text())["models"]:
        weights = huggingface_hub.hf_hub_download(repo_id, f"{sig}.safetensors", local_files_only=local_files_only)
        save_demucs_package(load_safetensors_model(weights), dest / f"{sig}.th")
    atomic_write(dest / f"{short}.yaml", lambda tmp: shutil.copyfile(bag_path, tmp))


def _pretrained_demucs_repo(cfg: ModelsConfig) -> tuple[Path, str]:
    short = cfg.demucs_name.split("/", 1)[-1]
    if cfg.demucs_repo:
        return Path(cfg.demucs_repo).expanduser(), short
    repo = cache_dir(cfg) / "pretrained" / "demucs"
    try:
        demucs_files(repo, short)
        return repo, short
    except ModelUnavailableError:
        pass
    try:  # the Hugging Face cache of an earlier `demucs` run, without network
        _fetch_demucs_from_hub(cfg.demucs_name, repo, local_files_only=True)
        return repo, short
    except Exception:
        pass
    what = f"pretrained Demucs weights of {cfg.demucs_name}"
    if _hub_offline():
        raise _offline_error(what, "HF_HUB_OFFLINE is set", cfg)
    if not reachable(*HF_HOST, cfg.connect_timeout_s):
        raise _offline_error(what, f"{HF_HOST[0]} unreachable within {cfg.connect_timeout_s:g} s", cfg)
    try:
        _fetch_demucs_from_hub(cfg.demucs_name, repo, local_files_only=False)
    except Exception as exc:
        raise _offline_error(what, f"download failed: {type(exc).__name__}: {exc}", cfg) from exc
    return repo, short


def load_demucs(cfg: ModelsConfig) -> tuple[Any, ModelIdentity]:
    """Load the Demucs model that ``cfg`` names with ``demucs.pretrained.get_model(name, repo=...)``, in eval mode.

    tiny / random-full are 6-source HTDemucs whose sources are our six stems, created in the cache on first use.
    Pretrained weights come from ``cfg.demucs_repo``, the cache, the Hugging Face cache, or a download.

    Returns:
        ``(model, identity)``; ``model`` is an ``HTDemucs`` or a ``BagOfModels`` (both go to ``apply_model``).

    Raises:
        ModelUnavailableError: the weights are missing and cannot be downloaded (fails within ``connect_timeout_s``).
        ChecksumMismatchError: the sha256 differs from ``cfg.demucs_sha256``.
        ModelLoadError: a file is corrupt or not a Demucs model.
    """
    _require("demucs")
    from demucs.pretrained import get_model

    if cfg.kind == "pretrained":
        repo, name = _pretrained_demucs_repo(cfg)
    else:
        repo, name = _random_demucs_repo(cfg)
        if not (repo / f"{name}.th").is_file():
            _write_random_demucs(cfg, repo, name)
    files = demucs_files(repo, name)
    digest = _check_pin(files, cfg.demucs_sha256, "Demucs weights")
    try:
        model = get_model(name, repo=repo)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load Demucs model {name} from {repo} ({', '.join(p.name for p in files)}): "
            f"{type(exc).__name__}: {exc}. A file is corrupt, truncated or not a Demucs package."
        ) from exc
    identity = ModelIdentity(
        kind=cfg.kind,
        name=name,
        sha256=digest,
        library="demucs",
        library_version=_version("demucs"),
        path=str(files[0] if len(files) == 1 else repo),
        random_weights=cfg.kind != "pretrained",
        seed=cfg.seed if cfg.kind != "pretrained" else None,
        n_params=_n_params(model),
    )
    return model.eval(), identity


# --- prepare / list ----------------------------------------------------------------------------------------------


def prepare(cfg: ModelsConfig) -> list[ModelIdentity]:
    """Make the DAC and Demucs weights of ``cfg`` available in the cache, load each once to check it, and return
    their identities (DAC first).

    For ``pretrained``, files taken from ``--dac-weights`` / ``--demucs-repo`` or from the libraries' caches are
    copied into ``<cache>/pretrained/``, so that directory alone can be copied to an offline machine.
    """
    _, dac_identity = load_dac(cfg)
    _, demucs_identity = load_demucs(cfg)
    if cfg.kind != "pretrained":
        return [dac_identity, demucs_identity]
    target = cache_dir(cfg) / "pretrained"
    dac_file = target / "dac" / DAC_PRETRAINED_FILE
    if Path(dac_identity.path).resolve() != dac_file.resolve():
        atomic_write(dac_file, lambda tmp: shutil.copyfile(dac_identity.path, tmp))
        dac_identity = dataclasses.replace(dac_identity, path=str(dac_file))
    demucs_dir = target / "demucs"
    repo, name = _pretrained_demucs_repo(cfg)
    if repo.resolve() != demucs_dir.resolve():
        sources = demucs_files(repo, name) + [p for p in [repo / f"{name}.yaml"] if p.is_file()]
        for src in sources:
            atomic_write(demucs_dir / src.name, functools.partial(shutil.copyfile, src))
        files = demucs_files(demucs_dir, name)
        demucs_identity = dataclasses.replace(
            demucs_identity, path=str(files[0] if len(files) == 1 else demucs_dir)
        )
    return [dac_identity, demucs_identity]


def list_cached(root: Path) -> list[ModelIdentity]:
    """Identities of every model file in a cache directory, read from disk without loading the models."""
    found: list[ModelIdentity] = []
    dac_version, demucs_version = _version("descript-audio-codec"), _version("demucs")
    for kind in ("tiny", "random-full"):
        for seed_dir in sorted((root / kind).glob("seed*")):
            seed = int(seed_dir.name[4:]) if seed_dir.name[4:].isdigit() else None
            for path in sorted(seed_dir.glob("*.pth")):
                found.append(
                    ModelIdentity(kind, path.stem, sha256_file(path), "descript-audio-codec", dac_version,
                                  str(path), True, seed)
                )
            for path in sorted((seed_dir / "demucs").glob("*.th")):
                found.append(
                    ModelIdentity(kind, path.stem, sha256_file(path), "demucs", demucs_version, str(path), True, seed)
                )
    for path in sorted((root / "pretrained" / "dac").glob("*.pth")):
        found.append(
            ModelIdentity("pretrained", path.stem, sha256_file(path), "descript-audio-codec", dac_version,
                          str(path), False)
        )
    repo = root / "pretrained" / "demucs"
    for bag in sorted(repo.glob("*.yaml")):
        try:
            files = demucs_files(repo, bag.stem)
        except ModelError:
            continue
        found.append(
            ModelIdentity("pretrained", bag.stem, combined_sha256(files), "demucs", demucs_version,
                          str(files[0] if len(files) == 1 else repo), False)
        )
    return found
