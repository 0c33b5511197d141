"""The README's quick start, copied from the README itself, run line by line in one fresh
shell: a new HOME, no CUMULO_* variables, no `cumulo` on PATH, a scratch directory outside
the repository, against a running platform started the way `make run` starts one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunningPlatform

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
START, END = "<!-- quick-start", "<!-- /quick-start -->"
# A comment that shows what the command prints: a JSON reply or a deploy's first line.
SHOWN = re.compile(r"#\s+((?:\{.*\})|(?:(?:deployed|unchanged) .*))$")


def quick_start() -> list[str]:
    """The fenced sh blocks between the quick-start markers, in order."""
    text = README.read_text()
    section = text[text.index(START) : text.index(END)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def expected_outputs(blocks: list[str]) -> list[str]:
    shown = []
    for block in blocks:
        for line in block.splitlines():
            match = SHOWN.search(line)
            if match and not line.lstrip().startswith("#"):
                shown.append(match.group(1))
    return shown


def test_readme_starts_with_make_run_and_make_test() -> None:
    lines = README.read_text().splitlines()
    assert lines[3].startswith("make run ")
    assert lines[4].startswith("make test ")


def test_readme_links_no_file_outside_the_repository() -> None:
    targets = re.findall(r"\]\(([^)#]+)", README.read_text())
    for target in targets:
        if "://" in target:
            continue
        assert (REPO / target).resolve().is_relative_to(REPO), target
        assert (REPO / target).exists(), target


def test_quick_start_runs_pasted_into_a_fresh_shell(
    fresh_platform: Callable[..., RunningPlatform],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = quick_start()
    assert len(blocks) >= 2, "the quick-start section lost its shell blocks"
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    home.mkdir()
    scratch.mkdir()
    # `cumulo up` saves its context in the per-user config of this (fresh) user.
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in [k for k in os.environ if k.startswith("CUMULO_")]:
        monkeypatch.delenv(name)
    fresh_platform(cwd=tmp_path)
    venv_bin = str(Path(sys.executable).parent)
    path = ":".join(p for p in os.environ["PATH"].split(":") if p and p != venv_bin)
    env = {"HOME": str(home), "PATH": path, "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    script = "set -eo pipefail\n" + "\n".join(blocks)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO,  # where the second terminal of the README starts
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    for shown in expected_outputs(blocks):
        assert shown in result.stdout, (shown, result.stdout)
    assert "greeted" in result.stdout  # `cumulo logs greet`
    # The README's files went to the scratch directory, not into the repository.
    assert not (REPO / "greet.py").exists()
    assert list(scratch.glob("*/greet.py"))
