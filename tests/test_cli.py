"""The ``hires`` command line: help everywhere, one-line errors with non-zero exit codes."""

from __future__ import annotations

import subprocess
import sys

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
    assert "usage: hires" in capsys.readouterr().out


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
