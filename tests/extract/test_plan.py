"""Planning and accounting by parts (``hummingml.extract.plan``) and the streamed listing it reads
(``hummingml.extract.sources.listing``): the parts together decide exactly what the whole listing would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hummingml.config import ConfigError
from hummingml.extract import plan
from hummingml.extract.sources import Source, describe, list_sources, listing, source_id
from hummingml.output import SourceState


def src(name: str, version: str = "1:1") -> Source:
    return Source(f"/corpus/{name}.wav", source_id(f"/corpus/{name}.wav"), "{}", f"/corpus/{name}.wav", version)


def listed_in_parts(chunks: list[list[Source]], parts: int) -> list[list[list[plan.Listed]]]:
    """``listed[p]``: part p of every chunk, as the listing tasks cut them."""
    cut = [plan.split_listing(chunk, number, parts) for number, chunk in enumerate(chunks)]
    return [[c[p] for c in cut] for p in range(parts)]


def test_parts_split_by_source_id_and_keep_listing_positions() -> None:
    chunks = [[src(f"a{i}") for i in range(50)], [src(f"b{i}") for i in range(30)]]
    parts = listed_in_parts(chunks, 4)
    every = [x for part in parts for chunk in part for x in chunk]
    assert len(every) == 80 and all(plan.part_of(s.source_id, 4) == p for p, part in enumerate(parts)
                                     for chunk in part for _, s in chunk)
    positions = {s.uri: pos for pos, s in every}
    assert positions["/corpus/a0.wav"] < positions["/corpus/a49.wav"] < positions["/corpus/b0.wav"]


def test_the_first_spelling_of_an_input_wins_across_chunks() -> None:
    first = Source("/corpus/x.wav", source_id("/corpus/x.wav"), '{"n": 1}', "/corpus/x.wav", "1:1")
    again = Source("/corpus/x.wav", source_id("/corpus/x.wav"), '{"n": 2}', "/corpus/x.wav", "1:1")
    parts = listed_in_parts([[src("y"), first], [again]], 2)
    winners = [s for p in parts for _, s in plan.unique(p)]
    assert first in winners and again not in winners
    assert sum(plan.plan_part(p, {}, False, 10**12)[2]["repeated"] for p in parts) == 1


def test_cutoff_takes_the_first_inputs_listed() -> None:
    assert plan.cutoff([3, 3, 3], 0) == 3 * plan.CHUNK_POSITIONS
    assert plan.cutoff([3, 3, 3], 4) == plan.CHUNK_POSITIONS + 1
    assert plan.cutoff([3, 3, 3], 3) == 3  # the whole first chunk, nothing of the second
    assert plan.cutoff([3, 3, 3], 100) == 3 * plan.CHUNK_POSITIONS
    chunks = [[src(f"{c}{i}") for i in range(3)] for c in "abc"]
    below = plan.cutoff([3, 3, 3], 4)
    run = {s.uri for part in listed_in_parts(chunks, 3) for s in plan.plan_part(part, {}, False, below)[0]}
    assert run == {"/corpus/a0.wav", "/corpus/a1.wav", "/corpus/a2.wav", "/corpus/b0.wav"}


def test_parts_plan_and_account_as_the_whole_listing_would() -> None:
    done, partial, failed, changed, new = src("done"), src("partial"), src("failed"), src("changed", "2:2"), src("new")
    state = {
        done.source_id: SourceState("1:1", 2, {0, 1}, set()),
        partial.source_id: SourceState("1:1", 3, {0}, set()),
        failed.source_id: SourceState("1:1", -1, set(), {-1}),
        changed.source_id: SourceState("1:1", 1, {0}, set()),
        source_id("/corpus/removed.wav"): SourceState("1:1", 1, {0}, set()),
    }
    sources = [done, partial, failed, changed, new]
    whole_pending, whole_skip, whole_changed = plan.plan(sources, state, retry_errors=False)
    parts = 3
    states = [{k: v for k, v in state.items() if plan.part_of(k, parts) == p} for p in range(parts)]
    results = [plan.plan_part(part, states[p], False, 10**12) for p, part in enumerate(listed_in_parts([sources], 3))]
    assert {s.uri for r in results for s in r[0]} == {s.uri for s in whole_pending}
    assert {k: v for r in results for k, v in r[1].items()} == whole_skip == {partial.source_id: [0]}
    counts = plan.add_counts([r[2] for r in results])
    assert (counts["in_run"], counts["pending"], counts["changed"]) == (5, 3, 1) and whole_changed == [changed.uri]
    accounted = plan.add_counts([plan.account_part(part, states[p], 10**12)
                                 for p, part in enumerate(listed_in_parts([sources], 3))])
    assert {k: accounted[k] for k in ("inputs", "ok", "failed", "unaccounted", "feature_rows", "error_rows")} == {
        "inputs": 5, "ok": 1, "failed": 1, "unaccounted": 3, "feature_rows": 2, "error_rows": 1}  # changed: old rows
    assert accounted["not_in_input"] == 1  # removed.wav: committed, no longer listed


def test_examples_are_joined_sorted_and_cut() -> None:
    counts = plan.add_counts([{"n": 2, "examples": [f"b{i}" for i in range(15)]}, {"n": 3, "examples": ["a"] * 15}])
    assert counts["n"] == 5 and len(counts["examples"]) == plan.EXAMPLES and counts["examples"][0] == "a"


# --- the streamed listing -------------------------------------------------------------------------------------------


def test_a_manifest_streams_in_chunks_and_names_the_bad_row(tmp_path: Path) -> None:
    uris = [str(tmp_path / f"s{i}.wav") for i in range(10)]
    table = pa.table({"uri": [*uris, None], "n": list(range(11))})
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=4)  # row groups the tasks read themselves
    chunks = list(listing(str(tmp_path / "m.parquet"), size=4))
    assert [c.row_groups for c in chunks] == [(0,), (1,), (2,)] and [c.first_row for c in chunks] == [1, 5, 9]
    assert [json.loads(s.metadata)["n"] for s in describe(chunks[1])] == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match="row 11 has no 'uri'"):
        describe(chunks[2])
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=11)  # one group, too large for a task: read here
    chunks = list(listing(str(tmp_path / "m.parquet"), size=2))
    assert [c.rows.num_rows for c in chunks] == [2, 2, 2, 2, 2, 1] and chunks[-1].first_row == 11
    with pytest.raises(ConfigError, match="row 11 has no 'uri'"):
        describe(chunks[-1])


def test_a_manifest_without_the_uri_column_is_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\n')
    with pytest.raises(ConfigError, match="no 'uri' column"):
        listing(str(tmp_path / "m.jsonl"))
    with pytest.raises(ConfigError, match="does not exist"):
        listing(str(tmp_path / "missing.parquet"))


def test_json_lines_chunks_keep_row_numbers_and_skip_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps({"uri": f"s{i}.wav"}) for i in range(5)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]))  # no final newline
    chunks = list(listing(str(tmp_path / "m.jsonl"), size=2))
    assert [s.uri for c in chunks for s in describe(c)] == [str(tmp_path / f"s{i}.wav") for i in range(5)]


def test_a_directory_walk_streams_in_order_and_lists_what_list_sources_lists(tmp_path: Path) -> None:
    for name in ("b/2.wav", "b/1.wav", "a.wav", "c/d/3.flac", "c/skip.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    chunks = list(listing(str(tmp_path), size=2))
    assert [len(c.paths) for c in chunks] == [2, 2]
    walked = [s.uri for c in chunks for s in describe(c)]
    assert walked == [str(tmp_path / n) for n in ("a.wav", "b/1.wav", "b/2.wav", "c/d/3.flac")]
    assert sorted(walked) == [s.uri for s in list_sources(str(tmp_path))]


def test_a_query_is_fetched_in_chunks(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE tracks (path TEXT)")
        connection.executemany("INSERT INTO tracks VALUES (?)", [(f"s{i}.wav",) for i in range(5)])
    chunks = list(listing(f"sqlite:///{db}", query="SELECT path AS uri FROM tracks ORDER BY path", size=2))
    assert [c.first_row for c in chunks] == [1, 3, 5]
    assert [Path(s.uri).name for c in chunks for s in describe(c)] == [f"s{i}.wav" for i in range(5)]
    with pytest.raises(ConfigError, match=r"read-only|SELECT"):
        listing(f"sqlite:///{db}", query="DELETE FROM tracks")
