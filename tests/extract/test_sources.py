from __future__ import annotations

import errno
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hummingml.audio import DecodeError
from hummingml.extract.sources import is_transient, list_sources, read_bytes, source_id


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
    uris = [s.uri for s in list_sources(str(tree))]
    assert uris == sorted(uris)
    names = {os.path.relpath(u, tree) for u in uris}
    assert names == {"a/one.wav", "a/two.FLAC", "dir.wav", "broken.wav"}


def test_glob_and_single_file(tree) -> None:
    assert [os.path.basename(s.uri) for s in list_sources(str(tree / "a" / "*.wav"))] == ["one.wav"]
    assert len(list_sources(str(tree / "a" / "one.wav"))) == 1


def test_missing_input_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
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
    assert [s.uri for s in sources] == [str(tree / "a" / "one.wav"), str(tree / "a" / "two.FLAC")]
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
