from __future__ import annotations

import io

import numpy as np
import pytest

from hummingml.extract.config import ExtractConfig
from hummingml.extract.job import Progress, exit_code


def summary(*rows: tuple[str, int, int, bool, str, float], skipped: dict[str, int] | None = None) -> dict:
    """A commit summary of rows (source_id, segment_index, n_segments, ok, deferred reason, audio seconds);
    ``skipped``: segments of a source that an earlier run committed."""
    columns = list(zip(*rows, strict=True))
    return {
        "source_id": np.array(columns[0], dtype=object),
        "segment_index": np.array(columns[1]),
        "n_segments": np.array(columns[2]),
        "n_skipped": np.array([(skipped or {}).get(sid, 0) for sid in columns[0]]),
        "ok": np.array(columns[3]),
        "deferred": np.array(columns[4], dtype=object),
        "audio_s": np.array(columns[5]),
    }


def test_inputs_are_done_when_their_remaining_segments_are_committed() -> None:
    progress = Progress(4, start=0.0)
    assert progress.line(10.0).startswith("0/4 inputs done") and progress.line(10.0).endswith("ETA unknown")
    # b had segment 0 committed by an earlier run
    progress.add(summary(("a", 0, 2, True, "", 30.0), ("b", 1, 2, True, "", 30.0), skipped={"b": 1}))
    assert progress.done == 1 and progress.committed == {"a": 1}  # b; a has one of its two segments
    progress.add(summary(("a", 1, 2, True, "", 30.0), ("c", -1, -1, False, "", 0.0), ("d", -1, -1, False, "503", 0.0)))
    assert (progress.done, progress.rows, progress.errors, progress.deferred) == (4, 4, 1, {"d": "503"})
    assert progress.committed == {}  # nothing in flight is held once done
    line = progress.line(60.0)
    assert line.startswith("4/4 inputs done, 4 rows committed (1 errors, 1 deferred)")
    assert "1.50 audio-s/s" in line  # 90 s of audio in 60 s
    assert line.endswith("ETA 0m00s")


def test_the_eta_follows_the_rate_of_inputs_done() -> None:
    progress = Progress(10, start=0.0)
    progress.add(summary(("0", 0, 1, True, "", 30.0), ("1", 0, 1, True, "", 30.0)))
    assert progress.line(100.0).endswith("ETA 6m40s")  # 2 inputs in 100 s: 8 more take 400 s


@pytest.mark.parametrize(
    ("inputs", "failed", "accounted", "fraction", "code"),
    [
        (6, 3, True, 0.5, 0),  # half failed: not more than the default
        (6, 4, True, 0.5, 1),  # more than half
        (6, 6, True, 1.0, 0),  # 1: never, whatever fails
        (6, 1, True, 0.0, 1),  # 0: any failure fails the job
        (0, 0, True, 0.5, 0),  # nothing listed
        (6, 0, False, 0.5, 1),  # an input unaccounted for
    ],
)
def test_the_exit_code_says_whether_too_many_inputs_failed(inputs, failed, accounted, fraction, code) -> None:
    err = io.StringIO()
    cfg = ExtractConfig(input="in", output="/data/out", max_failed_fraction=fraction)
    assert exit_code({"inputs": inputs, "failed": failed, "accounted": accounted}, cfg, "prog", err) == code
    lines = err.getvalue().splitlines()
    if code and accounted:
        assert lines == [f"prog: error: {failed} of {inputs} inputs failed ({failed / inputs:.0%}, more than "
                         f"--max-failed-fraction {fraction:g}); every row is written, and the errors set says why "
                         "each failed: hummingml inspect /data/out"]
    else:
        assert lines == []
