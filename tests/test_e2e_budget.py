"""The e2e marker's time budget (tests/e2e_budget.py): a test that costs more CPU time than its
budget, in this process or in a subprocess it waits for, fails the session and is named; one
within budget, or one that only waits, does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

DUMMY = """
import subprocess, sys, time
import pytest

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

@pytest.fixture(scope="module")
def shared_run():
    burn(0.3)  # a run shared through a fixture counts for the first test that uses it

@pytest.mark.e2e(budget=0.2)
def test_costly_setup(shared_run):
    pass

@pytest.mark.e2e(budget=0.2)
def test_costly_subprocess():
    code = "import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", code], check=True)

@pytest.mark.e2e(budget=0.2)
def test_waiting_costs_nothing():
    time.sleep(0.3)

@pytest.mark.e2e
def test_within_the_default_budget():
    burn(0.05)

def test_unmarked_is_not_costed():
    burn(0.3)
"""


def run_pytest(tmp_path, *args) -> subprocess.CompletedProcess:
    (tmp_path / "test_dummy.py").write_text(DUMMY)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "pytest", "-p", "e2e_budget", "-p", "no:cacheprovider"]
    command += ["-q", "-W", "ignore::pytest.PytestUnknownMarkWarning", *args]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "selection, over",
    [
        ("costly_setup", ["test_costly_setup"]),
        ("costly_subprocess", ["test_costly_subprocess"]),
        ("waiting or default or unmarked", []),
    ],
)
def test_a_test_over_its_budget_fails_the_session(tmp_path, selection, over):
    proc = run_pytest(tmp_path, "-k", selection)
    assert "failed" not in proc.stdout.splitlines()[-1]  # every test itself passes
    named = [line for line in proc.stdout.splitlines() if line.startswith("OVER BUDGET")]
    assert [line.split("::")[1].split(" ")[0] for line in named] == over, proc.stdout
    assert proc.returncode == (1 if over else 0), proc.stdout + proc.stderr
    assert "end-to-end time budget" in proc.stdout
