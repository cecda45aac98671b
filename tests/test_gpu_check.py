"""The GPU script's own machinery on the CPU: phase budgets, replicas handed over from the
background process, the correctness phase's tables, refusals of bad arguments. (The whole script
is rehearsed with ``python -m benchmarks.experiments.gpu_check --device cpu --smoke``.)"""
import json
import pickle
import time

import pytest

from benchmarks.experiments import gpu_check
from data_prep.synthetic import make_replica


def test_phase_budgets_share_the_total_and_carry_what_is_left():
    clock = gpu_check.Clock(52.0, {"a": 100, "b": 300, "c": 120})  # shares scaled to the total
    assert clock.begin("a") == pytest.approx(52.0 * 100 / sum(gpu_check.PHASES.values()), rel=1e-3)
    clock.end()                                                       # used ~0 s: all of it carries
    b = clock.begin("b")
    assert b == pytest.approx(52.0 * 400 / sum(gpu_check.PHASES.values()), rel=1e-2)
    time.sleep(0.05)
    assert clock.remaining() < b
    clock.end()
    bound = 52.0 - (time.perf_counter() - clock.start)
    assert clock.begin("c") <= bound                                  # share + carry, capped by the total


def test_pickled_replicas_are_served_to_the_planner_and_the_jobs(tmp_path):
    from benchmarks.run import jobs
    from benchmarks.run import runner
    ds = make_replica("tiktok", scale=0.02)
    path = gpu_check._replica_file(tmp_path, "tiktok", 0.02)
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(ds))
    ref, _ = jobs.resolve_dataset("synthetic:tiktok", "none", 0.02)
    with gpu_check._replicas_from(tmp_path):
        served = runner.load_dataset(ref)
        assert jobs.load_dataset(ref) is served                   # one load for planner and job
        assert served.fingerprint_digest() == ds.fingerprint_digest()
        other, _ = jobs.resolve_dataset("synthetic:baby", "none", 0.02)
        assert jobs.load_dataset(other).kind == "baby"            # no pickle: generated as usual
    assert jobs.load_dataset is not served and runner.load_dataset is jobs.load_dataset  # restored


def test_correctness_phase_writes_its_tables(tmp_path):
    clock = gpu_check.Clock(1e6, gpu_check.PHASES)  # a budget that never binds: a busy machine runs every step
    clock.begin("correctness")
    rows = gpu_check.phase_correctness("cpu", ["MFBPR"], clock, tmp_path, smoke=True)
    assert len(rows) == 4 and all(r["verdict"] == "ok" and r["poisoned_bitwise"] for r in rows)
    saved = json.loads((tmp_path / "correctness.json").read_text())
    assert len(saved["graphs"]) == 2 * 3 + 3 * 3 and saved["host_reads"][0]["host reads / training batch"] == 0
    assert "4 of 4 cases ok" in (tmp_path / "correctness.md").read_text()
    assert "aten::" in (tmp_path / "profile" / "MFBPR.txt").read_text()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown phase"):
        gpu_check.main(["--device", "cpu", "--phases", "speed,warp", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not the official src folder"):
        gpu_check.main(["--device", "cpu", "--official-src", str(tmp_path), "--out", str(tmp_path)])
