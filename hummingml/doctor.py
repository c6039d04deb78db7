"""Check that every dependency imports and its native parts load; print their versions.

Run as ``python -m hummingml.doctor`` (the install script does) or ``hummingml doctor``. Exits non-zero on failure.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def check() -> list[str]:
    """Import each dependency and exercise its compiled extension; return one line per problem (empty when fine)."""
    problems = []
    for name in ("numpy", "soundfile", "soxr", "pyarrow", "pretty_midi", "onnxruntime", "openvino", "ray", "demucs",
                 "dac"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
            print(f"{name:12s} {getattr(mod, '__version__', '?')}")
        except Exception as exc:  # report every failure, not just the first
            problems.append(f"import {name}: {exc!r}")
    try:
        import torch
        import torchaudio.functional as F

        # lfilter runs in torchaudio's compiled extension; this fails if the extension does not match torch
        F.lfilter(torch.zeros(1, 8), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
        print(f"{'torch':12s} {torch.__version__} (cuda available: {torch.cuda.is_available()})")
        print(f"{'torchaudio':12s} {importlib.import_module('torchaudio').__version__}")
    except Exception as exc:
        problems.append(f"torch/torchaudio: {exc!r}")
    try:
        from hummingml.stages.pitch import load_basic_pitch_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_basic_pitch_model()
        print(f"{'basic_pitch':12s} ONNX model loaded ({type(model.model).__name__})")
    except Exception as exc:
        problems.append(f"basic_pitch: {exc!r}")
    return problems


def main() -> int:
    """Print versions, then any problems; return the process exit code."""
    problems = check()
    for line in problems:
        print(f"PROBLEM: {line}", file=sys.stderr)
    print("environment OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
