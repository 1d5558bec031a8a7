"""The Makefile's `browser` step of `make test`, run with a PATH of stand-in commands: it installs Chromium as root or
through sudo, and otherwise installs nothing, says why, and lets `make test` go on (the browser test then skips)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="no make")


def stand_ins(folder: Path, uid: int, *commands: str) -> Path:
    """A folder of commands that record their arguments in calls.txt: `id` answering `uid`, and `commands`."""
    folder.mkdir()
    (folder / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for name in commands:
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {folder / "calls.txt"}\n')
    for script in folder.iterdir():
        script.chmod(0o755)
    return folder


def browser(path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    result = subprocess.run([MAKE, "-s", "-C", str(ROOT), "browser"], env={**os.environ, "PATH": str(path)},
                            capture_output=True, text=True)
    calls = path / "calls.txt"
    return result, calls.read_text().splitlines() if calls.is_file() else []


def test_a_user_without_root_or_sudo_installs_nothing_and_is_told_the_browser_test_is_skipped(tmp_path):
    result, calls = browser(stand_ins(tmp_path / "bin", 1000, "apt-get"))
    assert result.returncode == 0, result.stderr
    assert "browser test" in result.stdout and "skipped" in result.stdout and "needs root or sudo" in result.stdout
    assert calls == []


def test_a_user_with_sudo_installs_through_it(tmp_path):
    result, calls = browser(stand_ins(tmp_path / "bin", 1000, "apt-get", "sudo"))
    assert result.returncode == 0, result.stderr
    assert calls and all(call.startswith("sudo ") for call in calls) and "chromium" in calls[-1]


def test_root_installs_with_apt_get_itself(tmp_path):
    result, calls = browser(stand_ins(tmp_path / "bin", 0, "apt-get", "sudo"))
    assert result.returncode == 0, result.stderr
    assert calls and all(call.startswith("apt-get ") for call in calls) and "chromium" in calls[-1]


def test_nothing_is_installed_when_both_are_there(tmp_path):
    result, calls = browser(stand_ins(tmp_path / "bin", 1000, "apt-get", "sudo", "chromium", "openssl"))
    assert result.returncode == 0 and result.stdout == "" and calls == []
