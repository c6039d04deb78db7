"""Every flag is checked before anything runs: one stderr line per problem, exit code 2, and no file or folder made.

The command-line tests run the real entry points in a subprocess whose working directory, HOME and temp folders
(``TMPDIR``, ``RAY_TMPDIR``) all lie under ``tmp_path``, and compare the tree under it before and after.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from hummingml.config import ConfigError, add_flags, exit_on_config_error, exit_on_problems
from hummingml.eval.config import EvalConfig, GenerateConfig
from hummingml.extract.config import ExtractConfig
from hummingml.serve.config import RemixCommandConfig, ServeConfig
from hummingml.testing.signals import sine
from hummingml.train.config import PRESETS, TrainConfig, from_preset
from hummingml.weights.config import ModelsConfig

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _options(cls: type) -> set[str]:
    parser = argparse.ArgumentParser()
    add_flags(parser, cls)
    return {o for a in parser._actions for o in a.option_strings}


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    """``tmp_path`` with a 1 s WAV at ``in/a.wav`` and empty ``home/`` and ``tmp/`` for the subprocess."""
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", sine(440.0, seconds=1.0, sample_rate=16_000).T, 16_000)
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


def run_cli(work: Path, argv: list[str]) -> list[str]:
    """Run ``python -m argv...`` in ``work``; assert exit code 2, no stdout and nothing new under ``work``.

    Returns:
        The lines of stderr.
    """
    tmp = str(work / "tmp")
    env = {
        **os.environ, "HOME": str(work / "home"), "TMPDIR": tmp, "RAY_TMPDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }  # fmt: skip
    before = _tree(work)
    done = subprocess.run([sys.executable, "-m", *argv], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert _tree(work) == before
    return done.stderr.splitlines()


def run_extract(work: Path, *flags: str) -> list[str]:
    """``ray_jobs.extract`` on ``in/a.wav`` (unless ``flags`` has ``--input``) into ``out/``; the stderr lines."""
    given = ["--input", str(work / "in" / "a.wav")] if "--input" not in flags else []
    return run_cli(work, ["ray_jobs.extract", *given, "--output", str(work / "out"), *flags])


def assert_one_line_naming(lines: list[str], prog: str, flag: str, options: set[str]) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: ") and flag in FLAG.findall(lines[0]), lines
    assert set(FLAG.findall(lines[0])) <= options, lines


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--limit", "-1"], "--limit"),
        (["--read-retries", "-1"], "--read-retries"),
        (["--read-backoff-s", "-1"], "--read-backoff-s"),
        (["--melodic-stems", "flute"], "--melodic-stems"),
        (["--melodic-stems", "lead,vocals,lead"], "--melodic-stems"),
        (["--segment-s", "-1"], "--segment-s"),
        (["--segment-s", "0.0116"], "--segment-s"),
        (["--extensions", "wav"], "--extensions"),
        (["--commit-rows", "0"], "--commit-rows"),
        (["--mono-variants", "-1"], "--mono-variants"),
        (["--actor-threads", "0"], "--actor-threads"),
        (["--plan-cpus", "-1"], "--plan-cpus"),
        (["--wait-for-cpus-s", "-1"], "--wait-for-cpus-s"),
        (["--lease-timeout-s", "5"], "--lease-timeout-s"),
        (["--fail-after-commits", "-1"], "--fail-after-commits"),
        (["--query", "SELECT uri FROM tracks"], "--query"),
        (["--input", "sqlite:///tracks.db"], "--query"),
    ],
)
def test_extract_refuses_a_bad_value_before_creating_anything(work: Path, flags: list[str], flag: str) -> None:
    assert_one_line_naming(run_extract(work, *flags), "ray_jobs.extract", flag, _options(ExtractConfig))


def test_extract_reports_every_problem_at_once(work: Path) -> None:
    lines = run_extract(work, "--limit", "-1", "--segment-s", "-1")
    assert len(lines) == 2, lines
    assert {FLAG.findall(line)[0] for line in lines} == {"--limit", "--segment-s"}


def test_extract_refuses_an_input_that_does_not_exist_before_creating_anything(work: Path) -> None:
    lines = run_extract(work, "--input", str(work / "in" / "nope"))
    assert len(lines) == 1 and "--input" in lines[0] and "does not exist" in lines[0], lines


def test_inspect_of_a_folder_that_holds_no_output_is_refused_and_creates_nothing(work: Path) -> None:
    lines = run_cli(work, ["hummingml.cli", "inspect", str(work / "nothing-here")])
    assert len(lines) == 1 and lines[0].startswith("hummingml inspect: error: ") and "no extraction output" in lines[0]


def test_extract_requires_an_input(work: Path) -> None:
    lines = run_cli(work, ["ray_jobs.extract", "--output", str(work / "out")])
    assert_one_line_naming(lines, "ray_jobs.extract", "--input", _options(ExtractConfig))


@pytest.mark.parametrize(
    ("flags", "flag"),
    [(["--steps", "-3"], "--steps"), (["--steps", "0"], "--steps"), (["--parallel-tp", "0"], "--parallel-tp")],
)
def test_train_refuses_a_bad_value_before_creating_anything(work: Path, flags: list[str], flag: str) -> None:
    lines = run_cli(work, ["ray_jobs.train", "--storage", str(work / "runs"), *flags])
    assert_one_line_naming(lines, "ray_jobs.train", flag, _options(TrainConfig))


# In-process: the same parse as the commands above, for the values whose only difference is the check.


def parse_problems(module: str, argv: list[str]) -> list[str]:
    """The lines of the ConfigError that ``ray_jobs.<module>.parse(argv)`` raises."""
    import importlib

    with pytest.raises(ConfigError) as exc:
        importlib.import_module(f"ray_jobs.{module}").parse(argv)
    return str(exc.value).splitlines()


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--read-backoff-s", "nan"], "--read-backoff-s"),
        (["--wait-for-cpus-s", "inf"], "--wait-for-cpus-s"),
        (["--segment-s", "601"], "--segment-s"),
        (["--extensions", ","], "--extensions"),
        (["--input", "sqlite://tracks.db", "--query", "SELECT uri FROM t"], "--input"),
        (["--uri-column", ""], "--uri-column"),
        (["--models-kind", "flute"], "--models-kind"),
        (["--models-dac-weights", "w.pth"], "--models-dac-weights"),
        (["--models-connect-timeout-s", "0"], "--models-connect-timeout-s"),
        (["--pitch-onset-threshold", "2"], "--pitch-onset-threshold"),
        (["--pitch-minimum-frequency-hz", "900", "--pitch-maximum-frequency-hz", "100"],
         "--pitch-minimum-frequency-hz"),
        (["--pitch-windows-per-call", "0"], "--pitch-windows-per-call"),
        (["--separate-overlap", "1"], "--separate-overlap"),
        (["--separate-silent-stems", "flute"], "--separate-silent-stems"),
        (["--separate-segment-s", "0"], "--separate-segment-s"),
        (["--separate-shifts", "-1"], "--separate-shifts"),
        (["--codec-n-codebooks", "0"], "--codec-n-codebooks"),
        (["--codec-chunk-s", "0"], "--codec-chunk-s"),
        (["--codec-batch-size", "-1"], "--codec-batch-size"),
        (["--codec-device", "gpu 0"], "--codec-device"),
        (["--codec-backend", "onnx"], "--codec-backend"),
        (["--codec-backend", "openvino", "--codec-device", "cuda"], "--codec-backend"),
        (["--cpu-reservation", "0"], "--cpu-reservation"),
        (["--cpu-reservation", "1.5"], "--cpu-reservation"),
    ],
)  # fmt: skip
def test_extract_parse_names_each_refused_flag(flags: list[str], flag: str) -> None:
    given = [] if "--input" in flags else ["--input", "in.wav"]
    lines = parse_problems("extract", [*given, *flags])
    assert len(lines) == 1 and flag in FLAG.findall(lines[0]), lines
    assert set(FLAG.findall(lines[0])) <= _options(ExtractConfig), lines


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--cpus-per-worker", "0"], "--cpus-per-worker"),
        (["--parallel-dp", "-1"], "--parallel-dp"),
        (["--parallel-fsdp", "--parallel-zero1"], "--parallel-fsdp"),
        (["--parallel-compile", "--parallel-backend", "neuron"], "--parallel-compile"),
        (["--parallel-backend", "neuron", "--parallel-mixed-precision", "bf16"], "--parallel-zero1"),
        (["--parallel-backend", "neuron", "--parallel-fsdp"], "--parallel-fsdp"),
        (["--parallel-backend", "neuron", "--use-gpu"], "--use-gpu"),
        (["--parallel-zero1", "--parallel-tp", "2"], "--parallel-zero1"),
        (["--model-attention", "nki", "--model-pad-to-max", "--model-max-seq-len", "2048"], "--model-attention"),
        (["--model-n-heads", "0"], "--model-n-heads"),
        (["--model-n-heads", "5"], "--model-n-heads"),
        (["--model-rope-theta", "0"], "--model-rope-theta"),
        (["--optim-lr", "0"], "--optim-lr"),
        (["--optim-betas", "0.9,x"], "--optim-betas"),
        (["--optim-betas", "0.9"], "--optim-betas"),
        (["--optim-min-lr-ratio", "2"], "--optim-min-lr-ratio"),
        (["--data-frames", "1000"], "--data-frames"),
        (["--data-parts", "flute"], "--data-parts"),
        (["--data-timbre-max-frames", "8"], "--data-timbre-max-frames"),
        (["--data-mono-noise", "1.5"], "--data-mono-noise"),
    ],
)
def test_train_parse_names_each_refused_flag(flags: list[str], flag: str) -> None:
    lines = parse_problems("train", flags)
    assert len(lines) == 1 and flag in FLAG.findall(lines[0]), lines
    assert set(FLAG.findall(lines[0])) <= _options(TrainConfig), lines


def test_train_names_each_size_tp_does_not_divide() -> None:
    assert [FLAG.findall(line) for line in parse_problems("train", ["--parallel-tp", "3"])] == [
        ["--model-n-heads", "--parallel-tp"], ["--model-d-ff", "--parallel-tp"],
        ["--model-codebook-size", "--parallel-tp"],
    ]  # fmt: skip


def test_evaluate_parse_names_a_refused_split() -> None:
    lines = parse_problems("evaluate", ["--checkpoint", "c", "--split", "seen"])
    assert len(lines) == 1 and FLAG.findall(lines[0]) == ["--split"], lines


@pytest.mark.parametrize(
    ("flags", "flag"), [(["--checkpoint", "c", "--top-k", "0"], "--top-k"), (["--max-examples", "8"], "--checkpoint")]
)
def test_evaluate_refuses_a_bad_value_before_creating_anything(work: Path, flags: list[str], flag: str) -> None:
    lines = run_cli(work, ["ray_jobs.evaluate", "--out", str(work / "eval.json"), *flags])
    assert_one_line_naming(lines, "ray_jobs.evaluate", flag, _options(EvalConfig))


@pytest.mark.parametrize(
    ("argv", "prog", "flag", "cls"),
    [
        (["demo", "--songs", "0"], "hummingml demo", "--songs", None),
        (["synth-corpus", "corpus", "--seconds", "0"], "hummingml synth-corpus", "--seconds", None),
        (["extract", "--input", "in/a.wav", "--output", "out", "--limit", "-1"], "hummingml extract", "--limit",
         ExtractConfig),
        (["generate", "--hum", "in/a.wav", "--timbre", "in/a.wav", "--checkpoint", "c", "--temperature", "0"],
         "hummingml generate", "--temperature", GenerateConfig),
        (["models", "prepare", "--connect-timeout-s", "0"], "hummingml models prepare", "--connect-timeout-s",
         ModelsConfig),
        (["remix", "in/a.wav", "--mix-denoise", "2"], "hummingml remix", "--mix-denoise", RemixCommandConfig),
        (["remix", "in/a.wav", "--instrument", "tuba"], "hummingml remix", "--instrument", RemixCommandConfig),
        (["remix", "in/missing.wav"], "hummingml remix", "--song", RemixCommandConfig),
        (["serve", "--max-inflight", "0"], "hummingml serve", "--max-inflight", ServeConfig),
        (["serve", "--host", "0.0.0.0"], "hummingml serve", "--token-file", ServeConfig),
    ],
)  # fmt: skip
def test_hummingml_subcommands_refuse_a_bad_value(
    work: Path, argv: list[str], prog: str, flag: str, cls: type | None
) -> None:
    options = _options(cls) if cls else {"--songs", "--seconds", "--seed"}
    assert_one_line_naming(run_cli(work, ["hummingml.cli", *argv]), prog, flag, options)


@pytest.mark.parametrize(
    "argv",
    [["ray_jobs.extract", "--input", "x.wav", "--limit", "-1"], ["ray_jobs.train", "--steps", "0"],
     ["hummingml.cli", "extract", "--input", "x.wav", "--limit", "-1"]],
)  # fmt: skip
def test_a_refused_run_imports_neither_torch_nor_ray(argv: list[str]) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        f"    runpy.run_module({argv[0]!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "2 []", done.stderr


def test_a_config_error_raised_later_exits_2_with_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc, exit_on_config_error("job"):
        raise ConfigError("the output is locked by another driver\na manifest row has no uri")
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "job: error: the output is locked by another driver\njob: error: a manifest row has no uri\n"
    )
    exit_on_problems("job", [])  # no problems: returns


def test_default_configs_have_no_problems() -> None:
    assert ExtractConfig(input="in").problems() == []
    assert ExtractConfig().problems() == ["--input is required"]
    assert ExtractConfig(input="sqlite:///tracks.db", query="SELECT uri FROM tracks").problems() == []
    assert TrainConfig().problems() == []
    assert EvalConfig(checkpoint="c").problems() == []
    assert GenerateConfig(hum="h.wav", timbre="t.wav", checkpoint="c").problems() == []
    assert ModelsConfig().problems() == []
    assert RemixCommandConfig(song="s.wav").problems() == []
    assert ServeConfig().problems() == []
    assert ServeConfig(host="0.0.0.0", token_file="t").problems() == []


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_has_no_problems(preset: str) -> None:
    assert from_preset(preset).problems() == []


def test_the_shortest_segment_the_tests_use_is_allowed() -> None:
    assert ExtractConfig(input="in", segment_s=1.0).problems() == []
    assert ExtractConfig(input="in", segment_s=600.0).problems() == []


def _commands() -> list[list[str]]:
    """Every ``hummingml`` subcommand (``models`` with each of its own), read from the parser, plus every job."""
    import argparse as ap

    from hummingml.cli import build_parser

    commands = []
    sub = next(a for a in build_parser()._actions if isinstance(a, ap._SubParsersAction))
    for name, parser in sub.choices.items():
        nested = [a for a in parser._actions if isinstance(a, ap._SubParsersAction)]
        commands += (
            [["hummingml.cli", name, inner] for inner in nested[0].choices] if nested else [["hummingml.cli", name]]
        )
    jobs = sorted(p.stem for p in (ROOT / "ray_jobs").glob("*.py") if p.stem != "__init__")
    return commands + [[f"ray_jobs.{job}"] for job in jobs]


@pytest.mark.parametrize("argv", _commands(), ids=lambda argv: " ".join(argv))
def test_every_command_refuses_an_unknown_flag_in_one_line(work: Path, argv: list[str]) -> None:
    lines = run_cli(work, [*argv, "--no-such-flag=1"])
    # argparse's usage, then one error line: the unknown flag, or first the positional argument the command needs
    error = r"[\w. -]+: error: (unrecognized arguments: --no-such-flag=1|the following arguments are required: \w+)"
    assert re.fullmatch(error, lines[-1]), lines
    assert lines[0].startswith("usage: ") and not any("Traceback" in line for line in lines)


def test_an_expected_failure_is_one_line_exit_1_and_verbose_keeps_the_traceback(capsys) -> None:
    from hummingml.config import one_line_errors
    from hummingml.weights.config import ModelUnavailableError

    def missing() -> int:
        raise FileNotFoundError("no such checkpoint:\n  /runs/x")

    assert one_line_errors("ray_jobs.train", missing) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "ray_jobs.train: error: no such checkpoint: /runs/x (--verbose shows the traceback)"
    with pytest.raises(FileNotFoundError):
        one_line_errors("ray_jobs.train", missing, verbose=True)
    with pytest.raises(ConfigError):  # exit 2 is exit_on_config_error's
        one_line_errors("j", lambda: (_ for _ in ()).throw(ConfigError("--x must be >= 1")))
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        one_line_errors("j", lambda: (_ for _ in ()).throw(RuntimeError("bug")))
    assert one_line_errors("j", lambda: (_ for _ in ()).throw(ModelUnavailableError("offline"))) == 1
    assert one_line_errors("j", lambda: 3) == 3 and one_line_errors("j", lambda: {"rows": 1}) == 0


def test_a_study_on_unusable_features_is_one_line_and_creates_nothing(tmp_path, capsys) -> None:
    from ray_jobs.study import main

    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exc:
        main(["--features", str(tmp_path / "nothing"), "--out", str(out)])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ray_jobs.study: error: --features ") and not out.exists()
