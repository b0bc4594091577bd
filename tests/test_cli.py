"""The ``tomesd`` console command: its subcommand table, help and errors, the entry point pyproject declares,
and (slow) the command as ``pip install .`` installs it, run from a directory that is not the clone."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tomesd.cli import COMMANDS, Command, main

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_tomesd_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"tomesd": "tomesd.cli:main"}
    module, _, function = scripts["tomesd"].partition(":")
    assert getattr(importlib.import_module(module), function) is main


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_has_a_main_and_help_that_names_it(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tomesd {name} ")


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


@pytest.mark.parametrize("argv, message", [([], "no command given"), (["fly"], "unknown command 'fly'")])
def test_a_missing_or_unknown_subcommand_exits_2_with_the_list(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "generate" in err


def test_a_command_whose_optional_dependency_is_missing_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "fake", Command("a_module_this_environment_lacks", "a stand-in", "ui"))
    assert main(["fake"]) == 2
    assert "pip install 'tomesd[ui]'" in capsys.readouterr().err


def test_the_app_module_runs_from_another_directory(tmp_path):
    """``python -m tomesd.ui`` needs no particular working directory (the slow install test runs ``tomesd app``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tomesd.ui", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--share" in done.stdout and "--model" in done.stdout


@pytest.mark.slow
def test_pip_install_gives_a_working_command_from_any_directory(tmp_path):
    """``pip install .`` (no editable link: a wheel built from this tree, its package data included) into a
    fresh target folder; the installed ``tomesd`` then runs a tiny batch on the shipped demo model from an
    unrelated directory. Dependencies come from this environment (--no-deps), so nothing is downloaded."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(ROOT)], check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [str(site / "bin" / "tomesd")]
    where = subprocess.run([sys.executable, "-c", "import tomesd; print(tomesd.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(site)  # the installed copy, not this clone
    listing = subprocess.run([*command, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert all(name in listing.stdout for name in COMMANDS)
    app = subprocess.run([*command, "app", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert app.returncode == 0 and "usage: tomesd app" in app.stdout, app.stderr
    done = subprocess.run([*command, "generate", "--prompt", "a red circle", "--ratios", "0", "0.5", "--steps", "1",
                           "--width", "64", "--height", "64", "--no-warmup", "--threads", "1", "--out", "run"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((elsewhere / "run").glob("*.png"))) == 2 and "| 0.5 | 1 |" in done.stdout
