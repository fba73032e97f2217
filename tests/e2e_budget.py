"""The e2e marker's time budget, a pytest plugin (tests/conftest.py loads it; a test runs it on
its own): every test marked e2e is costed, and the session fails when one costs more than its
budget. Nothing here imports gmcert or torch."""

from __future__ import annotations

import os
import time

import pytest

# CPU seconds an e2e test may cost: this process's and those of the subprocesses it waited
# for, its setup (a run shared through a fixture) and teardown included. CPU time, not wall
# time: what the test costs, less sensitive to a busy machine (on 2 cores shared with other
# work, one test took 49, 52 and 117 s of wall time; its CPU time still varied, 41 to 104 s, so
# a budget needs room). A guard against a quick run quietly becoming slow (a default turned
# paper-scale, a stage no longer skipped), not a speed test: most quick runs cost 1-20 CPU s
# and a few 25-45 (walls of the fast suite at load 1-4), so 90 s leaves room for a busy or
# slower machine; the one that trains a conv encoder in the run sets its own. Tests marked
# slow (several processes, trained encoders, a diffusion model) get ten times as much; a test
# may set its own: @pytest.mark.e2e(budget=S).
E2E_BUDGET_S = 90.0
SLOW_E2E_BUDGET_S = 900.0
E2E_COST: dict[str, tuple[float, float, float]] = {}  # nodeid -> (CPU s, wall s, budget)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    marker = item.get_closest_marker("e2e")
    cpu, wall = cpu_seconds(), time.perf_counter()
    yield
    if marker is not None:
        default = SLOW_E2E_BUDGET_S if item.get_closest_marker("slow") else E2E_BUDGET_S
        budget = float(marker.kwargs.get("budget", default))
        E2E_COST[item.nodeid] = (cpu_seconds() - cpu, time.perf_counter() - wall, budget)


def over_budget() -> dict[str, tuple[float, float, float]]:
    return {node: cost for node, cost in E2E_COST.items() if cost[0] > cost[2]}


def pytest_sessionfinish(session, exitstatus):
    if over_budget() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not E2E_COST:
        return
    node, (cpu, wall, _) = max(E2E_COST.items(), key=lambda entry: entry[1][0])
    total = sum(cost[0] for cost in E2E_COST.values())
    terminalreporter.section("end-to-end time budget (CPU seconds)", sep="-")
    terminalreporter.write_line(
        f"{len(E2E_COST)} e2e test(s), {total:.1f} CPU s in all; the costliest: {node}, "
        f"{cpu:.1f} CPU s ({wall:.1f} s wall)"
    )
    for node, (cpu, wall, budget) in sorted(over_budget().items()):
        terminalreporter.write_line(
            f"OVER BUDGET (the session fails): {node} cost {cpu:.1f} CPU s ({wall:.1f} s wall),"
            f" its budget {budget:g} s",
            red=True,
            bold=True,
        )
