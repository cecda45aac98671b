"""GPU worker slots of the local backend, with torch.cuda.device_count monkeypatched (no GPU needed)."""
import queue

import pytest
import torch

import run_all
from benchmarks import experiment
from benchmarks.report import writer
from benchmarks.run import runner
from benchmarks.run.runner import RunOptions, gpu_worker_slots, plan


@pytest.fixture
def gpus(monkeypatch):
    """gpus(n): pretend n CUDA GPUs are visible."""
    def set_count(n):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


def test_no_gpu_keeps_cpu_workers(gpus):
    gpus(0)
    assert gpu_worker_slots("auto", 1) is None
    assert gpu_worker_slots(None, 4) is None
    assert gpu_worker_slots("cpu", 2) is None
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            gpu_worker_slots(device, 1)


def test_slots_are_gpus_times_jobs_per_gpu_spread_over_the_gpus(gpus):
    gpus(2)
    assert gpu_worker_slots("auto", 1) == ["cuda:0", "cuda:1"]
    assert gpu_worker_slots("cuda", 3) == ["cuda:0", "cuda:1"] * 3
    gpus(3)
    slots = gpu_worker_slots("auto", 2)
    assert len(slots) == 6 and {s: slots.count(s) for s in slots} == {"cuda:0": 2, "cuda:1": 2, "cuda:2": 2}
    assert slots[:3] == ["cuda:0", "cuda:1", "cuda:2"]  # a short grid still uses every GPU
    assert gpu_worker_slots("cuda:2", 3) == ["cuda:2"] * 3  # one named GPU: K slots on it
    assert gpu_worker_slots("cpu", 2) is None  # --device cpu: GPUs are not used at all


def test_bad_slot_requests_fail(gpus):
    gpus(2)
    with pytest.raises(ValueError, match=r"only 2 GPU\(s\)"):
        gpu_worker_slots("cuda:2", 1)
    with pytest.raises(ValueError, match="jobs-per-gpu"):
        gpu_worker_slots("auto", 0)
    for bad in ("tpu", "cpu:0", "cuda:x", "auto:1"):
        with pytest.raises(ValueError, match="device must be"):
            gpu_worker_slots(bad, 1)


def test_worker_takes_one_slot_and_runs_its_jobs_there(monkeypatch):
    """The worker initializer pins the process to its slot's GPU; jobs then run on that device."""
    pinned, ran = [], []
    monkeypatch.setattr(runner, "_SLOT_DEVICE", None)
    monkeypatch.setattr(runner, "_worker_init", lambda threads, progress_queue=None: None)  # keep this process's threads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pinned.append(str(d)))
    monkeypatch.setattr(runner, "run_job", lambda spec, on_epoch=None: ran.append(spec["config"]["device"]) or {})
    slots = queue.Queue()
    for d in ("cuda:1", "cuda:0"):
        slots.put(d)
    runner._slot_worker_init(1, None, slots)
    assert pinned == ["cuda:1"] and slots.qsize() == 1  # took exactly one slot
    spec = {"config": {"device": "auto", "epochs": 1}}
    runner._run_on_slot(spec)
    runner._run_on_slot({"config": {"device": "cuda"}})
    runner._run_on_slot({"config": {"device": "cpu"}})  # a job configured for the CPU stays there
    assert ran == ["cuda:1", "cuda:1", "cpu"]
    assert spec["config"]["device"] == "auto"  # the planned spec is not mutated


def test_cli_device_and_jobs_per_gpu(monkeypatch, tmp_path, gpus, capsys):
    calls = []
    monkeypatch.setattr(experiment, "execute", lambda jobs, store, **kw: calls.append((jobs, kw)) or
                        {"planned": len(jobs), "skipped": 0, "ok": 0, "failed": 0})
    monkeypatch.setattr(writer, "write_report", lambda *a, **k: [])
    base = ["--datasets", "synthetic:tiktok", "--models", "MFBPR", "--quick", "--scale", "0.03", "--seeds", "1",
            "--data-root", str(tmp_path), "--results-dir", str(tmp_path / "r"), "--no-progress"]
    gpus(2)
    assert run_all.main(base + ["--jobs-per-gpu", "2"]) == 0
    assert calls[-1][1]["devices"] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert "4 GPU slot(s)" in capsys.readouterr().out
    assert run_all.main(base + ["--device", "cuda:1", "--jobs-per-gpu", "3"]) == 0
    assert calls[-1][1]["devices"] == ["cuda:1"] * 3
    assert all(j["config"]["device"] == "cuda:1" for j in calls[-1][0])  # --device sets the config key
    assert run_all.main(base + ["--jobs", "0"]) == 0  # in-process: no slots
    assert calls[-1][1]["devices"] is None and calls[-1][1]["n_workers"] == 0
    gpus(0)
    assert run_all.main(base + ["--jobs", "3", "--jobs-per-gpu", "2"]) == 0  # no GPU: --jobs as before
    assert calls[-1][1]["devices"] is None and calls[-1][1]["n_workers"] == 3
    assert run_all.main(base + ["--device", "cpu"]) == 0
    assert all(j["config"]["device"] == "cpu" for j in calls[-1][0])
    n = len(calls)
    assert run_all.main(base + ["--device", "cuda"]) == 2  # no GPU here: refused before anything runs
    assert run_all.main(base + ["--device", "gpu"]) == 2
    assert run_all.main(base + ["--device", "cpu", "--set", "device=auto"]) == 2
    assert run_all.main(base + ["--address", "auto"]) == 2  # --address needs --backend ray
    assert len(calls) == n
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "--device must be" in err and "needs --backend ray" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the slot wiring where CUDA is absent (jobs fail "
                                                         "naming their device); with a GPU they would really train")
def test_worker_processes_run_jobs_on_their_slot_device(tmp_path):
    """Real spawned workers: every job runs on its worker's slot device (here CUDA is absent, so
    each job fails at once with that device named, which shows where it was sent)."""
    opts = RunOptions(protocols=["missing"], datasets=["synthetic:tiktok"], models=["MFBPR"], seeds=[1, 2, 3],
                      data_root=str(tmp_path), quick=True, scale=0.03, results_dir=str(tmp_path / "r"),
                      cache_dir=None, jobs=2, progress=False)
    jobs = plan(opts).jobs
    assert all(j["config"]["device"] == "auto" for j in jobs)
    records = []
    runner._run_pool(jobs, 2, records.append, devices=["cuda:0", "cuda:1"])
    assert sorted(r["job_id"] for r in records) == sorted(j["job_id"] for j in jobs)
    for r in records:
        assert r["config"]["device"] in ("cuda:0", "cuda:1")
        assert r["status"] == "failed" and "no CUDA GPU is visible" in r["error"]


def test_worker_threads_respects_omp_num_threads(monkeypatch):
    import os
    from benchmarks.run.runner import worker_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_threads(1) == max(1, os.cpu_count() or 1)
    assert worker_threads(10 ** 6) == 1                      # never zero threads
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_threads(1) == 3 and worker_threads(8) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive integer"):
            worker_threads(1)


def test_a_job_that_cannot_fit_the_gpu_is_refused_before_training(monkeypatch):
    """check_device_memory: built model and data plus gradients and Adam state against the device."""
    from types import SimpleNamespace

    from benchmarks.run.jobs import check_device_memory
    model = torch.nn.Linear(1000, 1000)                     # 1,001,000 float32 parameters: 4.0 MB
    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 5 * gib)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=5 * gib + 2 * 10 ** 7))
    check_device_memory(model, torch.device("cpu"))           # the CPU: nothing to check
    check_device_memory(model, torch.device("cuda:0"))        # 5 GiB + 12 MB needed, 5 GiB + 20 MB there: fits
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=5 * gib + 10 ** 7))
    with pytest.raises(MemoryError, match=r"Linear needs at least 5\.0 GiB on cuda:0 .* the device has 5\.0 GiB"):
        check_device_memory(model, torch.device("cuda:0"))


def test_a_device_request_is_resolved_once_to_a_torch_device(gpus):
    from benchmarks.run.devices import parse_device, resolve_device
    assert parse_device(None) == ("auto", None) and parse_device("cuda:3") == ("cuda", 3)
    gpus(0)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"only 2 GPU\(s\) are visible"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        parse_device("gpu", "--device")
