"""Tests for nanoseek/threads.py: the OpenMP wait policy every command sets before torch loads."""
import os
import subprocess
import sys


def policy(env: dict) -> str:
    """GOMP_SPINCOUNT and OMP_WAIT_POLICY after spin_briefly(), in a fresh interpreter with `env`."""
    code = ("import os; from nanoseek.threads import spin_briefly; spin_briefly(); "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code], env=base | env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_idle_threads_spin_briefly_by_default():
    assert policy({}) == ["1000", "None"]


def test_a_policy_the_user_exported_wins():
    assert policy({"OMP_WAIT_POLICY": "PASSIVE"}) == ["None", "PASSIVE"]
    assert policy({"GOMP_SPINCOUNT": "50"}) == ["50", "None"]
