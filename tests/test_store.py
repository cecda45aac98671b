"""The results store survives interrupted writers and concurrent appends."""
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.run.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]


def test_incomplete_last_line_is_skipped_and_next_append_starts_fresh(tmp_path, capsys):
    store = ResultStore(tmp_path)
    store.append({"job_id": "a", "status": "ok"})
    with open(store.path, "ab") as f:  # a writer killed mid-record
        f.write(b'{"job_id": "b", "status": "o')
    assert [r["job_id"] for r in store.records()] == ["a"]
    assert "incomplete record" in capsys.readouterr().err
    store.append({"job_id": "c", "status": "failed"})
    assert [r["job_id"] for r in store.records()] == ["a", "c"]
    assert store.finished_ids() == {"a", "c"}
    assert store.finished_ids(retry_failed=True) == {"a"}


def _writer(path, worker, n):
    store = ResultStore(path)
    for i in range(n):
        store.append({"job_id": f"{worker}-{i}", "status": "ok", "payload": "x" * (5000 + worker)})


def test_parallel_writers_never_interleave(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 160
    ids = [json.loads(line)["job_id"] for line in lines]  # every line is a whole record
    assert len(set(ids)) == 160


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and POSIX signals")
def test_killed_worker_is_retried_and_grid_completes(tmp_path):
    """SIGKILL the worker process (not the runner) mid-job: the job is retried, nothing is lost."""
    cmd = [sys.executable, "run_all.py", "--protocol", "missing", "--datasets", "synthetic:tiktok",
           "--models", "LightGCN", "--seeds", "1,2,3", "--quick", "--scale", "0.03", "--set", "epochs=60",
           "--set", "stopping_step=100", "--data-root", str(tmp_path),
           "--results-dir", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
           "--jobs", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = None
    deadline = time.time() + 120
    while worker is None and time.time() < deadline:
        time.sleep(0.5)
        for child in Path(f"/proc/{proc.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                    worker = int(pid)
    assert worker is not None, "no worker process found"
    time.sleep(3)  # let it get into a job
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    recs = ResultStore(tmp_path / "res").records()
    assert len(recs) == 3 and len({r["job_id"] for r in recs}) == 3
    assert all(r["status"] == "ok" for r in recs)
