"""The libraries' known warnings are filtered in model processes; every other warning still shows."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import logging, warnings
warnings.simplefilter("default")
if {quiet}:
    from hummingml.quiet import quiet_libraries
    quiet_libraries()
import torch
torch.nn.utils.weight_norm(torch.nn.Conv1d(1, 1, 3))
import resampy
logging.warning("Coremltools is not installed. (as basic-pitch says at import)")
logging.warning("our own line")
warnings.warn("our own warning", UserWarning)
"""


def run(quiet: bool) -> str:
    done = subprocess.run([sys.executable, "-c", CODE.format(quiet=quiet)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_known_warnings_are_dropped_and_others_kept() -> None:
    loud, quiet = run(False), run(True)
    for known in ("weight_norm` is deprecated", "pkg_resources is deprecated", "Coremltools is not installed"):
        assert known in loud and known not in quiet, known
    for ours in ("our own line", "our own warning"):
        assert ours in loud and ours in quiet, ours
