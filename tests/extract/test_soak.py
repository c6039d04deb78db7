"""The soak in its short form: hostile inputs mixed in, model actors killed at random, the accounting holds."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_short_soak_accounts_for_every_input(tmp_path) -> None:
    from benchmarks.soak import main

    report = main(["--files", "40", "--fault-rate", "0.3", "--kill-every-s", "10", "--time-limit-s", "900",
                   "--work", str(tmp_path / "soak"), "--seed", "3"])
    assert report["finished"], report
    assert report["holds"], report
    assert report["hostile_inputs"] >= 5 and report["errors_by_type"]
    assert sum(report["actor_kills"].values()) >= 1, "the soak killed at least one model actor"
