from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from schemas.docs import render
from schemas.features import SCHEMAS


def test_every_field_is_documented() -> None:
    def walk(fields):
        for f in fields:
            yield f
            inner = f.type
            while pa.types.is_list(inner):
                inner = inner.value_type
            if pa.types.is_struct(inner):
                yield from walk([inner.field(i) for i in range(inner.num_fields)])

    for schema in SCHEMAS.values():
        for field in walk(list(schema)):
            assert field.metadata and field.metadata.get(b"doc"), field.name


def test_docs_file_is_current() -> None:
    assert (Path(__file__).parent.parent / "docs" / "schemas.md").read_text() == render()
