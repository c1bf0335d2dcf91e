"""The ``hires`` command line: help everywhere, one-line errors with non-zero exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import build_parser, main


def all_commands() -> list[list[str]]:
    parser = build_parser()
    found = [[]]

    def walk(p, prefix):
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, child in action.choices.items():
                    found.append(prefix + [name])
                    walk(child, prefix + [name])

    walk(parser, [])
    return found


@pytest.mark.parametrize("cmd", all_commands(), ids=lambda c: " ".join(c) or "hires")
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hires" in out
    assert "--debug" in out and "-q, --quiet" in out  # the global flags, listed by every command


def test_global_flags_go_before_or_after_the_command():
    parser = build_parser()
    for argv in (["-q", "corpus", "scan", "x"], ["corpus", "scan", "x", "-q"], ["corpus", "scan", "-q", "x"]):
        args = parser.parse_args(argv)
        assert args.quiet and not args.debug, argv
    args = parser.parse_args(["corpus", "scan", "x"])
    assert not args.quiet and not args.debug
    args = parser.parse_args(["--debug", "synth", "render", "d", "--quiet"])
    assert args.debug and args.quiet  # given before, not reset by the sub-command's parser
    assert parser.parse_args(["synth", "render", "d", "--debug"]).debug


def test_corpus_scan_with_quiet_after_the_command(tmp_path, capsys):
    rc = main(["corpus", "scan", "--print-config", "-q"])
    assert rc == 0 and "vctk_mic: mic1" in capsys.readouterr().out


def test_core_commands_exist():
    names = {" ".join(c) for c in all_commands()}
    assert {"corpus scan", "corpus demo", "banks rir", "banks noise"} <= names


def test_missing_root_is_one_line_error(tmp_path, capsys):
    rc = main(["corpus", "scan", str(tmp_path / "nope"), "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "nope" in err and err.startswith("hires: error:")


def test_bad_config_names_file_and_field(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scan:\n  workers: zero\n")
    rc = main(["corpus", "scan", str(tmp_path), "--out", str(tmp_path / "m.parquet"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2 and str(cfg) in err and "workers" in err


def test_flags_override_file_and_print_config(tmp_path, capsys):
    rc = main(
        [
            "corpus",
            "scan",
            str(tmp_path),
            "--out",
            str(tmp_path / "m.parquet"),
            "--verify",
            "header",
            "--min-sample-rate",
            "8000",
            "--print-config",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "verify: header" in out and "speech: 8000" in out


def test_python_dash_m_pipelines_is_the_same_cli():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    )
    assert "corpus" in out.stdout


def test_group_without_subcommand_prints_help_and_fails(capsys):
    assert main(["corpus"]) == 2
    assert "scan" in capsys.readouterr().out


# --- errors: what the user can fix is one line (exit 2); a bug is one line + a traceback file (exit 1)

FAKE_COMMANDS = """
import argparse

from datasets.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boom")
    p.add_argument("kind", choices=["bug", "data", "missing"])
    p.set_defaults(func=run)


def run(args):
    if args.kind == "bug":
        try:
            return {}["a"]
        except KeyError:
            return int("not a number")  # a bug: a ValueError raised while handling a KeyError
    if args.kind == "data":
        raise DataError("m.parquet: manifest lacks column(s) path\\nsecond line")
    raise FileNotFoundError("/nowhere/m.parquet: manifest not found")
"""


@pytest.fixture
def fake_commands(tmp_path, monkeypatch):
    """A command group ``boom`` whose sub-commands fail on purpose; tracebacks go to a temporary folder."""
    (tmp_path / "hires_fake_commands.py").write_text(FAKE_COMMANDS)
    (tmp_path / "hires_broken_commands.py").write_text("import hires_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("pipelines.cli.COMMAND_MODULES", ["hires_fake_commands"])
    monkeypatch.setenv("HIRES_LOG_DIR", str(tmp_path / "logs"))
    return tmp_path / "logs"


def test_a_bug_is_exit_1_with_a_traceback_file(fake_commands, capsys):
    rc = main(["boom", "bug"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert err.startswith("hires: internal error: ValueError: invalid literal for int()")
    logs = list(fake_commands.iterdir())
    assert len(logs) == 1 and f"(traceback written to {logs[0]})" in err
    text = logs[0].read_text()
    # the whole chain, with the line of the bug and the command line
    assert "KeyError" in text and "ValueError" in text and 'int("not a number")' in text
    assert text.startswith("command: hires boom bug")


def test_a_project_error_is_exit_2_one_line(fake_commands, capsys):
    assert main(["boom", "data"]) == 2
    err = capsys.readouterr().err
    assert err == "hires: error: m.parquet: manifest lacks column(s) path second line\n"
    assert main(["boom", "missing"]) == 2
    assert capsys.readouterr().err == "hires: error: /nowhere/m.parquet: manifest not found\n"
    assert not fake_commands.exists()  # no traceback file for user errors


def test_debug_reraises(fake_commands):
    with pytest.raises(ValueError, match="invalid literal"):
        main(["--debug", "boom", "bug"])
    with pytest.raises(ValueError, match="invalid literal"):
        main(["boom", "bug", "--debug"])
    from datasets.errors import DataError

    with pytest.raises(DataError):
        main(["--debug", "boom", "data"])


def test_unwritable_log_dir_falls_back_to_the_temp_dir(fake_commands, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HIRES_LOG_DIR", str(blocker / "logs"))  # cannot be created: its parent is a file
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert main(["boom", "bug"]) == 1
    err = capsys.readouterr().err
    assert f"traceback written to {tmp_path / 'tmp' / 'hires-logs'}" in err


def test_a_command_module_that_fails_to_import_is_loud(fake_commands, monkeypatch, capsys):
    monkeypatch.setattr("pipelines.cli.COMMAND_MODULES", ["hires_fake_commands", "hires_broken_commands"])
    rc = main(["boom", "data"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(
        "hires: internal error: pipelines.cli.CommandImportError: command module hires_broken_commands "
        "failed to import: ModuleNotFoundError: No module named 'hires_module_that_does_not_exist'"
    )
    assert "hires_module_that_does_not_exist" in next(fake_commands.iterdir()).read_text()
    with pytest.raises(Exception, match="hires_broken_commands"):
        main(["--debug", "boom", "data"])


def test_every_listed_command_module_imports():
    """Nothing is skipped: the shipped list builds (test_help_everywhere then covers each parser)."""
    import importlib

    from pipelines.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        assert hasattr(importlib.import_module(name), "register"), name


def test_usage_error_is_the_project_type():
    from datasets.errors import HiresError
    from pipelines.cli import UsageError

    assert issubclass(UsageError, HiresError)


def test_bad_out_suffix_is_a_usage_error(tmp_path, capsys):
    rc = main(["corpus", "scan", str(tmp_path), "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "m.csv" in err and ".parquet" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["banks", "rir", "--out", "x", "--count", "0"],
        ["banks", "noise", "--out", "x", "--minutes", "nan"],
        ["corpus", "demo", "--out", "x", "--seed", "-1"],
        ["corpus", "demo", "--out", "x", "--speakers", "two"],
        ["models", "summary", "vocoder", "--seconds", "0"],
        ["demo", "--num-cpus", "0"],
    ],
    ids=lambda a: " ".join(a[:2] + a[-2:]),
)
def test_bad_numbers_are_usage_errors_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    flag = argv[-2]
    assert f"argument {flag}" in capsys.readouterr().err


def test_errors_raised_in_ray_tasks_are_reported_by_their_cause(fake_commands, monkeypatch, capsys):
    """Ray re-raises a task's exception as RayTaskError(cause) whose message is the remote traceback."""
    from ray.exceptions import RayTaskError

    from datasets.errors import DataError

    def remote(kind):
        def run(args):
            try:
                raise kind("shard-000003.tar: member a.json does not decode")
            except Exception as e:
                raise RayTaskError(
                    "render_shard", "Traceback (most recent call last):\n  ...\n", e
                ).as_instanceof_cause() from e

        return run

    import importlib

    hires_fake_commands = importlib.import_module("hires_fake_commands")  # written by the fixture
    monkeypatch.setattr(hires_fake_commands, "run", remote(DataError))
    assert main(["boom", "data"]) == 2
    assert capsys.readouterr().err == "hires: error: shard-000003.tar: member a.json does not decode\n"
    monkeypatch.setattr(hires_fake_commands, "run", remote(KeyError))
    assert main(["boom", "data"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "hires: internal error: KeyError: 'shard-000003.tar: member a.json does not decode' ("
    )


# --- finding one's way: the environment, --print-config, flags named in errors, help that matches the commands


def test_a_python_without_the_dependencies_says_so_in_one_line():
    """``python3 -m pipelines`` outside .venv: -S leaves site-packages (yaml, pyarrow ...) out, as a bare python3."""
    from ray_helpers import REPO

    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-S", "-m", "pipelines", "corpus", "scan", "x"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("hires: error: ") and "a dependency of hires" in out.stderr
    assert ".venv/bin/hires" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("argv", "shows"),
    [
        (["corpus", "scan"], "vctk_mic: mic1"),
        (["synth", "plan", "--set", "segment.tail=drop"], "tail: drop"),
        (["synth"], "samples_per_shard: auto"),
        (["train", "recovery", "--config", "tiny", "--set", "train.steps=7"], "steps: 7"),
    ],
    ids=lambda a: " ".join(a[:2]) if isinstance(a, list) else None,
)
def test_print_config_needs_none_of_the_run_arguments(argv, shows, capsys):
    assert main([*argv, "--print-config"]) == 0
    assert shows in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["corpus", "scan"], "ROOT, --out"),
        (["corpus", "scan", "somewhere"], "--out"),
        (["synth", "plan", "--clean", "c"], "--noise, --rir, --out"),
        (["train", "recovery", "--shards", "s"], "--out"),
    ],
)
def test_missing_run_arguments_are_one_line(argv, missing, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(f"required: {missing}"), err


def test_a_bad_flag_value_is_blamed_on_the_flag_not_the_shipped_config(tmp_path, capsys):
    rc = main(["corpus", "scan", str(tmp_path), "--out", str(tmp_path / "m.parquet"), "--workers", "1000"])
    err = capsys.readouterr().err
    assert (
        rc == 2 and err.startswith("hires: error: --workers 1000: scan.workers:") and "corpus.yaml" not in err
    )
    rc = main(["synth", "--print-config", "--set", "segment.tail=cut"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and err.startswith("hires: error: --set segment.tail=cut: segment.tail:")
        and ".yaml" not in err
    )


def test_a_misspelled_section_of_the_corpus_config_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "corpus.yaml"
    cfg.write_text("scna:\n  workers: 2\n")
    assert main(["corpus", "scan", "--print-config", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err == f"hires: error: {cfg}: invalid config: scna: unknown key\n"


def test_help_describes_only_commands_that_exist(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out.lower()
    commands = {c[0] for c in all_commands() if c}
    for word, command in (("evaluat", "evaluate"), ("retrain", "retrain"), ("restore ", "restore")):
        assert word not in text or command in commands, (
            f"`hires --help` mentions {word!r} without the command"
        )


def test_models_summary_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit):
        main(["models", "summary", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "instant" not in text and "a few seconds" in text and "meta device" in text


def test_scan_out_in_an_unusable_place_is_refused_before_scanning(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["corpus", "scan", str(tmp_path), "--out", str(afile / "m.parquet")]) == 2
    assert f"{afile} is a file" in capsys.readouterr().err
    (tmp_path / "d.parquet").mkdir()
    assert main(["corpus", "scan", str(tmp_path), "--out", str(tmp_path / "d.parquet")]) == 2
    assert "is a directory" in capsys.readouterr().err


BROKEN_PIPE_SCRIPT = """
import argparse, sys
from pipelines import cli
build = cli.build_parser
def with_spam():
    parser = build()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.add_parser("spam").set_defaults(func=lambda args: [print("x" * 100) for _ in range(10**6)])
    return parser
cli.build_parser = with_spam
sys.exit(cli.main(["spam"]))
"""


def test_a_reader_that_stops_early_is_not_an_internal_error(tmp_path):
    """``hires shards list DIR | head``: the closed pipe ends the command quietly, as SIGPIPE would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BROKEN_PIPE_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(tmp_path),
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HOME": str(tmp_path)},
    )
    assert proc.stdout.readline().startswith(b"xxx")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"internal error" not in err and b"Traceback" not in err, err.decode()
