"""The Ray backend: resources from the configuration, the optional import, and a grid on a local Ray
instance that survives killed workers (the end-to-end test needs Ray: pip install -r requirements-ray.txt)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import run_all
from benchmarks.run.ray_backend import RayBackendError, infeasible, job_device, job_resources
from benchmarks.run.runner import RunOptions, plan
from benchmarks.run.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- without Ray

def test_importing_the_suite_does_not_import_ray():
    code = ("import sys, run_all, benchmarks.run.ray_backend, benchmarks.run.runner, benchmarks.run.jobs; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_backend_ray_without_ray_names_the_requirements_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code = run_all.main(["--backend", "ray", "--datasets", "synthetic:tiktok", "--models", "MFBPR", "--quick",
                         "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "requirements-ray.txt" in err and "pip install" in err
    assert not (tmp_path / "r").exists()  # nothing ran


def test_job_resources_come_from_the_configuration():
    assert job_resources({}) == {"num_cpus": 1, "num_gpus": 0}
    assert job_resources({"resources_cpus": 1, "resources_gpus": 0, "resources_memory_mb": None}) == \
        {"num_cpus": 1, "num_gpus": 0}
    assert job_resources({"resources_cpus": 2, "resources_gpus": 0.5, "resources_memory_mb": 512}) == \
        {"num_cpus": 2, "num_gpus": 0.5, "memory": 512 * 2 ** 20}
    for bad in ({"resources_cpus": 0}, {"resources_gpus": 1.5}, {"resources_gpus": -1},
                {"resources_cpus": "two"}, {"resources_memory_mb": 0}, {"resources_cpus": True}):
        with pytest.raises(RayBackendError):
            job_resources(bad)
    assert job_device({"device": "auto"}, 0) == "cpu"  # no GPU asked for: never touch one Ray did not assign
    assert job_device({"device": "auto"}, 0.5) == "cuda"  # the GPU Ray assigned (CUDA_VISIBLE_DEVICES)
    assert job_device({"device": "cuda:3"}, 1) == "cuda"
    assert job_device({"device": "cpu"}, 1) == "cpu"
    with pytest.raises(RayBackendError, match="resources_gpus"):
        job_device({"device": "cuda"}, 0)


def test_no_node_can_run_the_job():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 8e9}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0, "memory": 1e12}}]
    ok, gpu, big = ({"num_cpus": 2, "num_gpus": 0}, {"num_cpus": 1, "num_gpus": 0.5},
                    {"num_cpus": 1, "num_gpus": 0, "memory": 16 * 2 ** 30})
    assert infeasible([ok, gpu, big], nodes) == [gpu, big]


def test_resources_are_not_part_of_a_jobs_identity(tmp_path):
    base = dict(protocols=["missing"], datasets=["synthetic:tiktok"], models=["MFBPR"], seeds=[1, 2],
                data_root=str(tmp_path), quick=True, scale=0.03, progress=False)
    plain = plan(RunOptions(**base)).jobs
    asking = plan(RunOptions(**base, sets={"resources_cpus": 2, "resources_gpus": 0.5,
                                           "resources_memory_mb": 1024})).jobs
    assert [j["job_id"] for j in plain] == [j["job_id"] for j in asking]
    assert [j["grid_group"] for j in plain] == [j["grid_group"] for j in asking]
    assert asking[0]["config"]["resources_gpus"] == 0.5 and plain[0]["config"]["resources_gpus"] == 0


# --------------------------------------------------------------------------- a grid on Ray

def test_unreachable_cluster_address_fails_fast(tmp_path, capsys, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install -r requirements-ray.txt)")
    import socket
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    inits = []

    def init(*args, **kwargs):  # the real ray.init would retry the address for minutes
        inits.append(kwargs.get("address"))
        raise ConnectionError("nothing listens there")

    monkeypatch.setattr(ray, "init", init)
    code = run_all.main(["--backend", "ray", "--address", f"127.0.0.1:{port}", "--datasets", "synthetic:tiktok",
                         "--models", "MFBPR", "--quick", "--scale", "0.03", "--seeds", "1", "--data-root",
                         str(tmp_path), "--results-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and inits == []  # refused before Ray is asked to connect
    assert f"cannot reach the Ray head at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "r" / "results.jsonl").exists()


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line (process title) of every live descendant of ``root``."""
    out, todo = {}, [root]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            for pid in kids:
                if pid in out:
                    continue
                try:
                    out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                todo.append(pid)
    return out


def _start_time(pid: int):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # state, then field 22 (starttime)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes() and _start_time(int(d.name)) is not None:
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and POSIX signals")
def test_grid_on_local_ray_survives_killed_workers(tmp_path):
    """`--backend ray` on a local instance: SIGKILL one job's worker once (Ray reruns it) and another
    job's worker twice (recorded failed): every job is in the store exactly once, the tables are written,
    and no process of the test's Ray instance is left."""
    pytest.importorskip("ray", reason="Ray is not installed (optional extra: pip install -r requirements-ray.txt)")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    cmd = [sys.executable, "run_all.py", "--backend", "ray", "--protocol", "missing", "--datasets", "synthetic:tiktok",
           "--models", "MFBPR,LightGCN", "--seeds", "1,2,3", "--quick", "--scale", "0.03",
           "--set", "epochs=1500", "--set", "stopping_step=100000",
           "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "res"),
           "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    seen = {}  # pid -> start time of every process of this Ray instance
    kills: dict[str, list[int]] = {}  # job id -> pids killed while running it
    retried = failed = None
    try:
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
            deadline = time.time() + 1200  # a bound against a hang, not a speed check: loaded machines are slow
            while proc.poll() is None and time.time() < deadline:
                for pid, title in _descendants(proc.pid).items():
                    seen.setdefault(pid, _start_time(pid))
                    if not title.startswith("ray::dgmrec:"):
                        continue
                    job = title.split()[0].rsplit(":", 1)[1]  # ray::dgmrec:<model>:<dataset>:s<seed>:<job id>
                    if pid in kills.get(job, []):
                        continue
                    if retried is None:
                        retried = job  # killed once: Ray reruns it
                    elif failed is None and job != retried:
                        failed = job  # killed on every attempt: recorded failed
                    if (job == retried and not kills.get(job)) or (job == failed and len(kills.get(job, [])) < 2):
                        time.sleep(0.5)  # let it get into the job
                        try:
                            os.kill(pid, signal.SIGKILL)
                            kills.setdefault(job, []).append(pid)
                        except ProcessLookupError:
                            pass
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
            proc.wait(60)
        stdout, stderr = out_path.read_text(), err_path.read_text()
        print(stdout[-8000:], stderr[-3000:], sep="\n")  # shown with -s / on failure
        assert proc.returncode == 1, stderr[-3000:]  # a run with a failed job exits non-zero
        assert len(kills.get(retried, [])) == 1 and len(kills.get(failed, [])) == 2, kills

        recs = ResultStore(tmp_path / "res").records()
        ids = [r["job_id"] for r in recs]
        assert len(ids) == 6 and len(set(ids)) == 6  # 2 models x 3 seeds, once each
        by_id = {r["job_id"]: r for r in recs}
        assert by_id[retried]["status"] == "ok"
        assert by_id[failed]["status"] == "failed"
        assert "the Ray worker process died 2 times while running this job" in by_id[failed]["error"]
        assert sum(r["status"] == "ok" for r in recs) == 5
        for r in recs:
            if r["status"] == "ok":
                assert r["config"]["device"] == "cpu" and r["environment"]["threads"] == 1
                assert (tmp_path / "res" / r["per_user_file"]).is_file()  # landed in the driver's results dir
        assert "missing.md" in (tmp_path / "res" / "index.md").read_text()
        assert (tmp_path / "res" / "missing.md").is_file()
        assert "1 failed now" in stdout

        # No process of this Ray instance outlives the run (ray.shutdown in the backend).
        deadline = time.time() + 30
        while time.time() < deadline:
            alive = [p for p, t in seen.items() if t is not None and _start_time(p) == t]
            alive += _processes_mentioning(ray_tmp)
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, f"stray Ray processes: {alive}"
    finally:
        for pid in _processes_mentioning(ray_tmp):  # only this test's instance: its session lives in ray_tmp
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_task_ships_generated_features_and_takes_them_in_the_spec(tmp_path):
    """A Ray worker writes into a temporary folder: the DGMRec job's generated features come back as
    bytes (like the per-user file), and a dependent job gets them in its spec from the driver's store."""
    from benchmarks.run.jobs import load_generated_for
    from benchmarks.run.ray_backend import _ray_task
    from benchmarks.run.runner import RunOptions, plan
    opts = RunOptions(protocols=["imputation"], datasets=["synthetic:baby"], models=["VBPR"], seeds=[1],
                      data_root=str(tmp_path), quick=True, scale=0.03, results_dir=str(tmp_path / "res"),
                      cache_dir=None, progress=False, sets={"epochs": 1, "imputation_sweep": ["generated"]})
    jobs = {j["model"]: j for j in plan(opts).jobs}
    store = ResultStore(opts.results_dir)
    rec, files = _ray_task(jobs["DGMRec"], "cpu", 1)
    assert rec["status"] == "ok" and set(files) == {"per_user_file", "generated_file"}
    store.append(rec)
    for key, data in files.items():
        (store.dir / rec[key]).parent.mkdir(parents=True, exist_ok=True)
        (store.dir / rec[key]).write_bytes(data)
    dep = dict(jobs["VBPR"], generated=load_generated_for(jobs["VBPR"]))
    rec, _ = _ray_task(dep, "cpu", 1)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["missing_axes"]["imputation"] == "generated"
