"""``bench plan``: ``run --plan``'s estimate beside the same run's measured time."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlanStage:
    """One row of ``bench plan``: a stage's estimated and measured seconds."""

    stage: str
    estimated: float
    measured: float


def bench_plan(run_args: Sequence[str], folder: Path) -> tuple[str, list[PlanStage]]:
    """(the plan's text, its stages beside the measured ones): ``python -m benchmark run``
    with ``run_args`` and ``--plan``, then the same run, each in a fresh process, with a
    fresh cache and run folder under ``folder``.

    Estimated: the plan's ``heatmaps``, ``training`` and ``total`` rows (``plan.csv``).
    Measured: the heatmaps, the sum of the run's ``timings.csv``; the total, the run's
    wall clock, start-up to page; training and the rest (start-up, volume checks, the
    classifier's report, protocol, pages), their difference.
    """
    import os
    import subprocess
    import sys

    import pandas as pd

    from benchmark.run.plan import HOUR, PLAN_CSV

    env = {**os.environ, "TONNO_CACHE": str(folder / "cache")}
    out = ["--out", str(folder / "run"), "--leaderboards", str(folder / "leaderboards")]
    argv = [sys.executable, "-m", "benchmark", "run", *run_args, *out]

    def run(*extra: str) -> str:
        done = subprocess.run([*argv, *extra], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ValueError(f"bench plan: the run failed (exit {done.returncode}): {last}")
        return done.stdout

    text = run("--plan")
    rows = pd.read_csv(folder / "run" / PLAN_CSV).set_index("family")["hours"] * HOUR
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    heatmaps = float(pd.read_csv(folder / "run" / "timings.csv").seconds.sum())
    return text, [
        PlanStage("heatmaps", rows["heatmaps"], heatmaps),
        PlanStage("training (measured: and the rest)", rows.get("training", 0.0), wall - heatmaps),
        PlanStage("total", rows["total"], wall),
    ]
