"""The `hf-ddpm` command line as a whole (issue 9): every option of every registered command documented and with a
validator decision, and the one error policy (one line; exit 2 for usage errors, 1 for failures; --debug)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import assert_declared_options, offline_env
from hf_ddpm import cli
from hf_ddpm.options import OptionParser, walk_parsers


def commands() -> list[tuple[str, OptionParser]]:
    return [(name, parser) for name, parser in walk_parsers(cli.build_parser()) if name != "hf-ddpm"]


def test_every_registered_command_is_walked():
    names = {name for name, _ in commands()}
    for command in cli.COMMANDS:
        assert command.name in names
        for sub in command.subcommands:
            assert f"{command.name} {sub.name}" in names


@pytest.mark.parametrize("name, parser", commands(), ids=[name for name, _ in commands()])
def test_every_option_has_help_and_a_validator_decision(name, parser):
    assert_declared_options(f"hf-ddpm {name}", parser)


def test_a_usage_error_is_one_line_with_exit_status_2(tmp_path):
    """The installed command, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "hf_ddpm.cli", "evaluate", str(tmp_path / "nonexistent")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **offline_env(tmp_path / "hf-home")})
    assert result.returncode == 2
    assert result.stderr.startswith("hf-ddpm evaluate: error: pipeline folder ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_reader_that_stops_early_gets_no_error_line():
    """`hf-ddpm ... | head`: the closed pipe ends the command quietly (exit 1, as Python's own), not in a traceback."""
    script = ("import sys; from hf_ddpm.options import run_guarded; "
              "sys.exit(run_guarded(lambda: [print('row', i) for i in range(10**6)], 'prog'))")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "row 0\n"
    process.stdout.close()
    assert process.wait(timeout=300) == 1
    assert process.stderr.read() == ""


def test_a_runtime_failure_is_one_line_with_exit_status_1_and_debug_shows_the_traceback(
        tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    import hf_ddpm.evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator went away\nsecond line")

    monkeypatch.setattr(hf_ddpm.evaluation, "bits_per_dim", broken)
    argv = ["evaluate", tiny_pipeline_dir, "--metrics", "bpd", "--bpd-num-images", "1", "--output",
            str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == ("hf-ddpm evaluate: error: RuntimeError: the accelerator went away second line "
                   "(rerun with --debug for the traceback)\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError, match="the accelerator went away"):
        cli.main([*argv, "--debug"])
    monkeypatch.setenv("HF_DDPM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the accelerator went away"):
        cli.main(argv)
