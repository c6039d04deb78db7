from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hummingml.audio import DecodeError
from hummingml.config import ConfigError
from hummingml.extract.sources import (
    Source,
    canonical_uri,
    connect_read_only,
    is_transient,
    list_sources,
    make_source,
    read_bytes,
    source_id,
)


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.wav").write_bytes(b"x")
    (tmp_path / "a" / "two.FLAC").write_bytes(b"y")
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "dir.wav").mkdir()  # a directory named like audio: must surface as an error, not vanish
    os.symlink(tmp_path / "gone.wav", tmp_path / "broken.wav")
    return tmp_path


def test_directory_listing_is_recursive_sorted_and_keeps_odd_entries(tree) -> None:
    sources = list_sources(str(tree))
    uris = [s.uri for s in sources]
    assert uris == sorted(uris)
    # a broken link is listed as what it points to, with no version: its read fails as not_found
    assert set(uris) == {canonical_uri(str(tree / n)) for n in ("a/one.wav", "a/two.FLAC", "dir.wav", "broken.wav")}
    assert {s.uri for s in sources if not s.version} == {canonical_uri(str(tree / "gone.wav"))}


def test_glob_and_single_file(tree) -> None:
    assert [os.path.basename(s.uri) for s in list_sources(str(tree / "a" / "*.wav"))] == ["one.wav"]
    assert len(list_sources(str(tree / "a" / "one.wav"))) == 1


def test_missing_input_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        list_sources(str(tmp_path / "nope"))


def test_source_id_is_stable_and_distinct() -> None:
    assert source_id("/a.wav") == source_id("/a.wav") != source_id("/b.wav")
    assert len(source_id("/a.wav")) == 32


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_resolves_relative_uris_and_keeps_metadata(tree, fmt: str) -> None:
    rows = [
        {"uri": "a/one.wav", "artist": "x", "year": 2001},
        {"uri": str(tree / "a" / "two.FLAC"), "artist": "y", "year": 2002},
    ]
    path = tree / f"manifest.{fmt}"
    if fmt == "csv":
        path.write_text("uri,artist,year\n" + "".join(f"{r['uri']},{r['artist']},{r['year']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    sources = list_sources(str(path))
    assert [s.uri for s in sources] == [os.path.realpath(tree / "a" / n) for n in ("one.wav", "two.FLAC")]
    assert json.loads(sources[0].metadata) == {"artist": "x", "year": 2001}


def test_manifest_without_the_uri_column_is_refused(tmp_path) -> None:
    (tmp_path / "m.csv").write_text("path\nx.wav\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list_sources(str(tmp_path / "m.csv"))


def test_read_bytes_errors_are_typed(tree) -> None:
    assert read_bytes(str(tree / "a" / "one.wav")) == b"x"
    with pytest.raises(DecodeError) as info:
        read_bytes(str(tree / "broken.wav"))
    assert info.value.kind == "not_found"
    with pytest.raises(DecodeError) as info:
        read_bytes(str(tree / "dir.wav"))
    assert info.value.kind == "unreadable"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7, Couldn't connect"), True),
        (OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."), True),
        (OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject operation"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (OSError(errno.ESTALE, "Stale file handle"), True),
        (OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), False),
    ],
)
def test_transient_read_errors_are_told_apart_from_facts_about_the_input(error: OSError, transient: bool) -> None:
    assert is_transient(error) is transient


# --- identity -----------------------------------------------------------------------------------------------------


def test_every_spelling_of_a_file_is_one_source(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    name = "a b\udcff.wav"  # a space and a non-UTF-8 byte: percent-encoded in its file:// URI
    (data / name).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(data, tmp_path / "linked")
    real = os.path.realpath(data / name)
    spellings = [str(data / name), (data / name).as_uri(), str(tmp_path / "linked" / name)]
    monkeypatch.chdir(tmp_path / "elsewhere")
    spellings.append(f"../data/{name}")
    monkeypatch.chdir(data)
    spellings += [f"./{name}", f"sub/../{name}", name]
    sources = [s for spelling in spellings for s in list_sources(spelling)]
    assert len(sources) == len(spellings)
    assert {(s.uri, s.canonical, s.source_id) for s in sources} == {(real, real, source_id(real))}
    assert {canonical_uri(s) for s in spellings} == {real}


def test_object_store_identity_drops_options_and_decodes_the_key() -> None:
    uri = "S3://audio/mix/a%20b.wav?endpoint_override=127.0.0.1:9000&scheme=http"
    assert canonical_uri(uri) == "s3://audio/mix/a b.wav"
    assert source_id(canonical_uri(uri)) == source_id(canonical_uri("s3://audio/mix/a%20b.wav"))


def test_a_file_uri_on_another_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="elsewhere"):
        canonical_uri("file://elsewhere/data/a.wav")
    assert canonical_uri("file://localhost/data/a.wav") == os.path.realpath("/data/a.wav")


def test_version_follows_the_bytes_and_is_empty_for_a_broken_link(tmp_path) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"first")
    first = make_source(str(path)).version
    path.write_bytes(b"other bytes")
    rewritten = make_source(str(path)).version
    with path.open("ab") as f:
        f.write(b"more")
    appended = make_source(str(path)).version
    assert len({first, rewritten, appended}) == 3 and all(first and rewritten and appended)
    assert appended.split(":")[0] == str(len(b"other bytesmore"))
    os.symlink(tmp_path / "gone.wav", tmp_path / "broken.wav")
    assert make_source(str(tmp_path / "broken.wav")).version == ""


# --- links and loops ----------------------------------------------------------------------------------------------


@pytest.fixture()
def loops(tmp_path):
    """``root`` with two files, a link to one of them, two link loops (``sub/loop -> root``, ``sub/back -> sub``)."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "x.wav").write_bytes(b"x")
    (root / "sub" / "y.wav").write_bytes(b"y")
    os.symlink(root / "x.wav", root / "sub" / "link.wav")
    os.symlink(root, root / "sub" / "loop")
    os.symlink(root / "sub", root / "sub" / "back")
    os.symlink(root, tmp_path / "alias")
    return root


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spelling", ["root/**/*.wav", "root", "alias", "alias/**/*.wav", "root/*/*.wav"])
def test_listings_through_link_loops_are_finite_and_list_each_file_once(loops, spelling: str) -> None:
    sources = list_sources(str(loops.parent / spelling))
    x, y = os.path.realpath(loops / "x.wav"), os.path.realpath(loops / "sub" / "y.wav")
    assert sorted(s.uri for s in sources) == sorted([x, y])  # root/*/*.wav: sub/y.wav, and sub/link.wav is x.wav
    assert len({s.source_id for s in sources}) == len(sources)


# --- manifests ----------------------------------------------------------------------------------------------------


def test_manifest_spellings_of_one_file_are_one_source_and_file_uris_are_understood(tmp_path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.wav").write_bytes(b"a")
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.wav").write_bytes(b"b")
    uris = ["./a.wav", "sub/../a.wav", "a.wav", (other / "b.wav").as_uri()]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"uri": u, "n": n}) + "\n" for n, u in enumerate(uris)))
    monkeypatch.chdir(other)  # relative rows are relative to the manifest's folder, not to the current one
    sources = list_sources(str(manifest))
    assert [s.uri for s in sources] == [os.path.realpath(tmp_path / "a.wav"), os.path.realpath(other / "b.wav")]
    assert [json.loads(s.metadata)["n"] for s in sources] == [0, 3]  # the first row of an identity wins
    assert all(s.version for s in sources)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_manifest_row_without_a_uri_is_refused_by_its_number(tmp_path, fmt: str) -> None:
    path = tmp_path / f"m.{fmt}"
    rows = [{"uri": "a.wav", "artist": "x"}, {"uri": None, "artist": "y"}]
    if fmt == "csv":
        path.write_text("uri,artist\na.wav,x\n,y\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(ConfigError, match=r"row 2 has no 'uri' \(null or empty\); fix the manifest"):
        list_sources(str(path))


def test_a_parquet_manifest_is_read_by_the_describing_tasks_in_runs_of_row_groups(tmp_path, monkeypatch) -> None:
    from hummingml.extract import sources

    for i in range(10):
        (tmp_path / f"{i}.wav").write_bytes(b"x")
    rows = [{"uri": f"{n % 10}.wav", "n": n} for n in range(1_000)]
    rows[537]["uri"] = ""
    pq.write_table(pa.Table.from_pylist(rows[:500]), tmp_path / "m.parquet", row_group_size=100)
    monkeypatch.chdir(tmp_path.parent)  # the tasks open the manifest by its absolute path
    chunks = list(sources.listing(str((tmp_path / "m.parquet").relative_to(tmp_path.parent)), size=256))
    # runs of whole row groups, the rows left in the file: 100 + 100 rows fit 256, a third group would not
    assert [(c.row_groups, c.first_row, c.rows) for c in chunks] == [
        ((0, 1), 1, None), ((2, 3), 201, None), ((4,), 401, None)
    ]
    monkeypatch.chdir("/")
    described = [s for c in chunks for s in sources.describe(c)]
    assert [json.loads(s.metadata)["n"] for s in described] == list(range(500))
    assert [s.uri for s in described[:10]] == [os.path.realpath(tmp_path / f"{i}.wav") for i in range(10)]
    # a row group too large to send whole is read here, a chunk at a time, with the rows' numbers kept
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=1_000)
    chunks = list(sources.listing(str(tmp_path / "big.parquet"), size=200))
    assert [(c.row_groups, c.first_row, c.rows.num_rows) for c in chunks] == [((), 1 + 200 * k, 200) for k in range(5)]
    with pytest.raises(ConfigError, match="row 538 has no 'uri'"):
        [sources.describe(c) for c in chunks]


def test_a_jsonl_row_missing_the_uri_key_is_refused(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"uri": "a.wav"}\n{"uri": "b.wav"}\n{"artist": "z"}\n')
    with pytest.raises(ConfigError, match="row 3 has no 'uri'"):
        list_sources(str(path))


# --- SQLite -------------------------------------------------------------------------------------------------------


@pytest.fixture()
def db(tmp_path) -> Path:
    (tmp_path / "a.wav").write_bytes(b"a")
    path = tmp_path / "tracks.db"
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE tracks (path TEXT, artist TEXT)")
        connection.execute("INSERT INTO tracks VALUES ('a.wav', 'x')")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "query",
    [
        "DROP TABLE tracks",
        "DELETE FROM tracks RETURNING path AS uri",
        "SELECT path AS uri FROM tracks; DROP TABLE tracks",
        "WITH x AS (SELECT 1) DELETE FROM tracks",
        "WITH x(n) AS MATERIALIZED (SELECT 1), y AS (SELECT 2) UPDATE tracks SET path = 'b.wav'",
        "SELECT path AS uri FROM tracks /* ; */ ; -- x\nDROP TABLE tracks",
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA writable_schema = ON",
        "SELECT 'unfinished",
    ],
)
def test_a_query_that_is_not_one_select_is_refused_and_the_database_is_unchanged(db: Path, query: str) -> None:
    before = sha256(db)
    with pytest.raises(ConfigError, match=r"^--query must be a single SELECT; got: ") as info:
        list_sources(f"sqlite:///{db}", query=query)
    assert "\n" not in str(info.value)
    assert sha256(db) == before
    assert [s.uri for s in list_sources(f"sqlite:///{db}", query="SELECT path AS uri FROM tracks")] == [
        os.path.realpath(db.parent / "a.wav")
    ]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT path AS uri, artist FROM tracks",
        "select path as uri, artist from tracks where path != 'x;--y' ; -- all of them",
        "/* tracks */ WITH t(uri, artist) AS (SELECT path, artist FROM tracks) SELECT * FROM t",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2) "
        "SELECT path AS uri, artist FROM tracks, n WHERE i = 1",
    ],
)
def test_a_select_reads_the_rows(db: Path, query: str) -> None:
    sources = list_sources(f"sqlite:///{db}", query=query)
    assert [(s.uri, json.loads(s.metadata)) for s in sources] == [
        (os.path.realpath(db.parent / "a.wav"), {"artist": "x"})
    ]


def test_the_query_reader_gets_one_statement_and_a_picklable_read_only_connect(db: Path) -> None:
    seen: list[str] = []

    def read_sql(query: str, connect) -> list[dict]:
        seen.append(query)
        connect = pickle.loads(pickle.dumps(connect))
        wrapped = f"SELECT * FROM ({query}) AS T LIMIT 10"  # as Ray Data wraps it
        with contextlib.closing(connect()) as connection:
            cursor = connection.execute(wrapped)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    sources = list_sources(f"sqlite:///{db}", query="SELECT path AS uri FROM tracks; -- comment", read_sql=read_sql)
    assert seen == ["SELECT path AS uri FROM tracks"] and len(sources) == 1


def test_the_read_only_connection_cannot_write(db: Path) -> None:
    before = sha256(db)
    with contextlib.closing(connect_read_only(str(db))) as connection:
        for statement in ("DELETE FROM tracks", "DROP TABLE tracks", "CREATE TABLE t (x)", "PRAGMA query_only = OFF"):
            with pytest.raises(sqlite3.DatabaseError):
                connection.execute(statement)
    assert sha256(db) == before


def test_a_query_row_without_a_uri_is_refused(db: Path) -> None:
    with pytest.raises(ConfigError, match="row 2 has no 'uri'"):
        list_sources(f"sqlite:///{db}", query="SELECT path AS uri FROM tracks UNION ALL SELECT NULL")


# --- object stores ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_object_store_sources_keep_their_options_and_share_the_listings_identity(s3, tmp_path) -> None:
    listed = {s.canonical: s for s in list_sources(f"s3://audio/mix/?{s3.query}")}
    manifest = tmp_path / "m.jsonl"
    uris = [
        f"s3://audio/mix/song_00000.wav?{s3.query}",
        f"S3://audio/mix/song_0000%30.wav?{s3.query}",
        f"s3://audio/mix/missing.wav?{s3.query}",
    ]
    manifest.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    song, missing = list_sources(str(manifest))
    assert song == Source(
        uris[0],
        listed["s3://audio/mix/song_00000.wav"].source_id,
        "{}",
        "s3://audio/mix/song_00000.wav",
        listed["s3://audio/mix/song_00000.wav"].version,
    )
    assert song.version and missing.version == "" and missing.uri == uris[2]
    assert read_bytes(song.uri)[:4] == b"RIFF"
