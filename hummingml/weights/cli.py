"""``hummingml models prepare|list``: make weights available, list the cache."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from hummingml.config import add_flags, from_flags
from hummingml.weights.config import KINDS, ModelError, ModelIdentity, ModelsConfig, cache_dir
from hummingml.weights.load import list_cached, prepare


def format_table(identities: list[ModelIdentity]) -> str:
    """Identities as a fixed-width text table (sha256 shortened to 16 digits)."""
    header = ("kind", "name", "library", "version", "random", "seed", "params", "sha256", "path")
    rows = [header] + [
        (i.kind, i.name, i.library, i.library_version, "yes" if i.random_weights else "no",
         "" if i.seed is None else str(i.seed), "" if i.n_params is None else f"{i.n_params / 1e6:.2f}M",
         i.sha256[:16], i.path)
        for i in identities
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


# --- command line ------------------------------------------------------------------------------------------------


def _print_identities(identities: list[ModelIdentity], as_json: bool) -> None:
    if as_json:
        print(json.dumps([i.to_dict() for i in identities], indent=2))
    elif identities:
        print(format_table(identities))


def _prepare_command(args: argparse.Namespace) -> int:
    try:
        cfg = from_flags(ModelsConfig, args)
    except ValueError as exc:
        print(f"hummingml models prepare: {exc}")
        return 2
    if not args.json:
        print(f"config: {dataclasses.asdict(cfg)}")
    start = time.perf_counter()
    try:
        identities = prepare(cfg)
    except ModelError as exc:
        print(f"error: {exc}")
        return 1
    _print_identities(identities, args.json)
    if not args.json:
        print(f"ready in {time.perf_counter() - start:.1f} s under {cache_dir(cfg)}")
    return 0


def _list_command(args: argparse.Namespace) -> int:
    root = cache_dir(ModelsConfig(cache_dir=args.cache_dir))
    identities = list_cached(root)
    if not identities and not args.json:
        print(f"no models under {root}; run `hummingml models prepare`")
        return 0
    _print_identities(identities, args.json)
    return 0


def add_models_parser(sub: Any) -> None:
    """Add ``hummingml models prepare|list`` to the subparsers ``sub`` of the ``hummingml`` command."""
    parser = sub.add_parser("models", help="prepare and list model weights (tiny, random-full, pretrained)")
    models_sub = parser.add_subparsers(dest="models_command", required=True)

    p = models_sub.add_parser(
        "prepare", help="create (tiny, random-full) or fetch (pretrained) the DAC and Demucs weights into the cache"
    )
    add_flags(p, ModelsConfig)
    next(a for a in p._actions if a.dest == "kind").choices = KINDS
    p.add_argument("--json", action="store_true", help="print the identities as JSON instead of a table")
    p.set_defaults(func=_prepare_command)

    p = models_sub.add_parser("list", help="list the model files in the cache with their sha256 (no loading)")
    p.add_argument("--cache-dir", default=None, help=ModelsConfig.__dataclass_fields__["cache_dir"].metadata["help"])
    p.add_argument("--json", action="store_true", help="print the identities as JSON instead of a table")
    p.set_defaults(func=_list_command)
