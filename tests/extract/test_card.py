"""The dataset card at an output root: Hugging Face ``datasets`` loads each set from it, exactly the current rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hummingml.extract.card import CARD, RANDOM_WARNING, SET_DESCRIPTIONS, render_card
from hummingml.extract.store import COMMITS, STAGING, OutputStore
from hummingml.output import read_set
from schemas.features import ERROR_SCHEMA, SCHEMA_VERSION, SCHEMAS

TRAINED = [{"name": "dac_44khz", "kind": "pretrained", "random_weights": False, "sha256": "ab" * 32}]


@pytest.fixture()
def hf(tmp_path, monkeypatch):
    """``datasets`` with its caches under the test's tmp_path and no hub access."""
    for name, value in {"HF_HOME": tmp_path / "hf", "HF_DATASETS_CACHE": tmp_path / "hf" / "datasets",
                        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, str(value))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    return datasets


def errors(*keys: tuple[str, str]) -> tuple[dict[str, pa.Table], list[tuple[str, int, int, bool, str]]]:
    """The tables and commit rows of whole-source errors, one per ``(source_id, source_version)``."""
    rows = [
        {"source_id": s, "segment_index": -1, "source_uri": f"/in/{s}.wav", "source_version": v, "stage": "decode",
         "error_type": "DecodeError:corrupt", "message": f"{s} {v}"}
        for s, v in keys
    ]  # fmt: skip
    return {"errors": pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)}, [(s, -1, -1, False, v) for s, v in keys]


def loaded(hf, root: Path, name: str | None = None) -> list[tuple[str, int]]:
    """The (source_id, segment_index) of every row ``datasets.load_dataset`` returns for a set."""
    split = hf.load_dataset(str(root), name, cache_dir=str(root.parent / "hf-cache"))["train"]
    return sorted(zip(split["source_id"], split["segment_index"], strict=True))


def current(root: Path, name: str) -> list[tuple[str, int]]:
    table = read_set(str(root), name, ["source_id", "segment_index"], log=None)
    return sorted(zip(table["source_id"].to_pylist(), table["segment_index"].to_pylist(), strict=True))


@pytest.mark.slow
def test_the_card_of_a_real_extraction_loads_every_set_as_its_current_rows(demo_features, tmp_path, hf) -> None:
    root = tmp_path / "features"
    shutil.copytree(demo_features, root)  # the run's own output, card included (load_dataset may write beside it)
    card = (root / CARD).read_text()
    assert card.startswith("---\nconfigs:\n") and f"Schema version {SCHEMA_VERSION}" in card
    assert RANDOM_WARNING in card  # the fixture's models are the tiny random ones
    summary = json.loads((root / "summary.json").read_text())
    assert card == render_card(str(root), summary)  # rewriting gives the same card
    names = hf.get_dataset_config_names(str(root))
    with_rows = [name for name in SCHEMAS if read_set(str(root), name, ["source_id"], log=None) is not None]
    assert sorted(names) == sorted(with_rows) and "audio-feature" in names
    for name in with_rows:
        assert loaded(hf, root, name) == current(root, name), name
        files = hf.load_dataset_builder(str(root), name).config.data_files["train"]
        assert files and all(f.endswith(".parquet") and f"/{name}/part-" in f for f in files)
        assert not [f for f in files if f"/{COMMITS}/" in f or f"/{STAGING}/" in f]
    assert loaded(hf, root) == current(root, "audio-feature")  # the default config
    for name in SCHEMAS:  # the card's row counts are the current rows'
        rows = len(current(root, name)) if name in with_rows else 0
        assert f"| `{name}` | {SET_DESCRIPTIONS[name]} | {rows} |" in card


def test_superseded_and_uncommitted_files_are_not_listed(tmp_path, hf) -> None:
    root = tmp_path / "out"
    store = OutputStore(str(root), log=None)
    store.commit(*errors(("a", "v1"), ("b", "v1")), {"models": TRAINED})  # a's row superseded below: a shared file
    store.commit(*errors(("c", "v1")), {"models": TRAINED})  # all its rows superseded below: not listed
    store.commit(*errors(("c", "v2")), {"models": TRAINED})
    store.commit(*errors(("a", "v2")), {"models": TRAINED})
    stray = errors(("z", "v1"))[0]["errors"]
    pq.write_table(stray, root / "errors" / "part-uncommitted.parquet")  # named by no marker
    (root / STAGING / "x.y").mkdir(parents=True)
    pq.write_table(stray, root / STAGING / "x.y" / "errors.parquet")
    store.write_summary({"inputs": 3, "failed": 3})

    card = (root / CARD).read_text()
    assert RANDOM_WARNING not in card and "dac_44khz | pretrained | trained" in card
    assert "1 committed file(s) whose rows were all superseded" in card
    assert "1 superseded row(s) (1 in `errors`)" in card
    assert hf.get_dataset_config_names(str(root)) == ["errors"]  # no rows in the feature sets: no configs for them
    rows = loaded(hf, root, "errors")
    assert current(root, "errors") == [("a", -1), ("b", -1), ("c", -1)]
    assert sorted(rows) == [("a", -1), ("a", -1), ("b", -1), ("c", -1)]  # the one superseded row the card names
    assert [p.name for p in root.iterdir() if ".tmp-" in p.name] == []  # the atomic writes left nothing behind


def test_every_superseded_file_dropped_gives_exactly_the_current_rows(tmp_path, hf) -> None:
    root = tmp_path / "out"
    store = OutputStore(str(root), log=None)
    store.commit(*errors(("a", "v1")), {})
    store.commit(*errors(("b", "v1")), {})
    store.commit(*errors(("a", "v2")), {})
    store.write_summary({"inputs": 2})
    assert loaded(hf, root, "errors") == current(root, "errors") == [("a", -1), ("b", -1)]
    assert "exactly the current rows" in (root / CARD).read_text()


@pytest.mark.parametrize(
    ("metadata", "summary", "warned"),
    [
        ({"config": {"models": {"kind": "tiny"}}}, {"inputs": 1}, True),  # the batch remix: kind in the files' config
        ({"config": {"models": {"kind": "random-full"}}}, {"inputs": 1}, True),
        ({"models": TRAINED}, {"inputs": 1}, False),
        ({}, {"inputs": 1, "models": [{**TRAINED[0], "random_weights": True}]}, True),  # the summary's models
    ],
)
def test_random_weights_warning_from_the_summary_or_the_files(tmp_path, metadata, summary, warned) -> None:
    store = OutputStore(str(tmp_path), log=None)
    store.commit(*errors(("a", "v1")), metadata)
    assert (RANDOM_WARNING in render_card(str(tmp_path), summary)) is warned


def test_an_output_without_rows_has_an_empty_config_list(tmp_path) -> None:
    OutputStore(str(tmp_path), log=None).write_summary({"inputs": 0})
    card = (tmp_path / CARD).read_text()
    assert card.startswith("---\nconfigs: []\n---\n")
