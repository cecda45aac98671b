"""The runner end to end: external models, grids chosen by validation, failures, resume after a kill."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import run_all
from benchmarks.core.engine import TrainResult
from benchmarks.run.config import ConfigError, check_sets, expand_grid, parse_sets, resolve
from benchmarks.report.selection import select_grid
from benchmarks.report.writer import write_report
from benchmarks.run.runner import RunOptions, execute, plan
from benchmarks.run.store import ResultStore
from models.base import Recommender
from models.losses import bpr_loss
from models.registry import UnknownModelError, get, register

ROOT = Path(__file__).resolve().parents[1]


@register("TestPopularity", defaults={"pop_weight": [0.0, 1.0]})
class PopularityModel(Recommender):
    """Registered here, outside the model packages: scores = learned bias + pop_weight * popularity."""
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task):
        super().__init__(config, task)
        self.bias = nn.Parameter(torch.zeros(self.n_items))
        self.pop = torch.from_numpy(task.item_degree()).float()
        self.pop_weight = float(config["pop_weight"])

    def scores(self):
        return self.bias + self.pop_weight * self.pop

    def calculate_loss(self, users, pos, neg):
        s = self.scores()
        return bpr_loss(s[pos], s[neg])

    def full_sort_predict(self, users):
        return self.scores().expand(len(users), -1)


@register("TestExploding", defaults={})
class ExplodingModel(PopularityModel):
    def __init__(self, config, task):
        config = dict(config, pop_weight=0.0)
        super().__init__(config, task)

    def calculate_loss(self, users, pos, neg):
        return self.bias.sum() * float("nan")


@register("TestOutOfMemory", defaults={})
class OutOfMemoryModel(PopularityModel):
    """Runs out of memory in its second epoch."""

    def __init__(self, config, task):
        super().__init__(dict(config, pop_weight=0.0), task)
        self.epoch = 0

    def pre_epoch(self, epoch):
        self.epoch = epoch

    def calculate_loss(self, users, pos, neg):
        if self.epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().calculate_loss(users, pos, neg)


def _opts(tmp_path, models, **kw):
    base = dict(protocols=["missing"], datasets=["synthetic:tiktok"], models=models, seeds=[1, 2],
                data_root=str(tmp_path), quick=True, scale=0.03, results_dir=str(tmp_path / "res"),
                cache_dir=str(tmp_path / "cache"), jobs=0, progress=False, sets={"epochs": 2, "grid_limit": None})
    base.update(kw)
    return RunOptions(**base)


def test_external_model_runs_through_runner_and_grid_is_chosen_by_validation(tmp_path):
    opts = _opts(tmp_path, ["TestPopularity"])
    p = plan(opts)
    assert len(p.jobs) == 4  # 2 seeds x 2 grid settings
    assert {j["config"]["pop_weight"] for j in p.jobs} == {0.0, 1.0}
    store = ResultStore(opts.results_dir)
    counts = execute(p.jobs, store, n_workers=0, progress=False)
    assert counts["ok"] == 4
    recs = store.records()
    for r in recs:
        for key in ("model", "dataset", "protocol", "missing_ratio", "seed", "status", "best_epoch", "valid", "test",
                    "train_seconds_per_epoch", "eval_seconds", "peak_memory_mb", "config", "fingerprint",
                    "code_version"):
            assert key in r, key
        assert "recall@20" in r["test"] and r["data_source"] == "synthetic"
    chosen = select_grid(recs)
    assert len(chosen) == 2
    for c in chosen:
        group = [r for r in recs if r["grid_group"] == c["grid_group"]]
        assert c["valid"]["recall@20"] == max(r["valid"]["recall@20"] for r in group)
    # rerun: nothing left to do
    assert execute(plan(opts).jobs, store, n_workers=0, progress=False)["skipped"] == 4
    files = write_report(recs, tmp_path / "tables", ["missing"])
    md = (tmp_path / "tables" / "missing.md").read_text()
    assert "TestPopularity" in md and "SYNTHETIC" in md
    assert any(f.suffix == ".tex" for f in files)


def test_nan_loss_is_recorded_and_grid_goes_on(tmp_path):
    opts = _opts(tmp_path, ["TestExploding", "TestOutOfMemory", "MFBPR"], seeds=[1],
                 sets={"epochs": 3, "reg_weight": 0.1, "stopping_step": 5})
    store = ResultStore(opts.results_dir)
    execute(plan(opts).jobs, store, n_workers=0, progress=False)
    by_model = {r["model"]: r for r in store.records()}
    assert by_model["TestExploding"]["status"] == "failed"
    assert "non-finite training loss" in by_model["TestExploding"]["error"]
    assert by_model["TestExploding"]["failed_epoch"] == 0
    oom = by_model["TestOutOfMemory"]
    assert oom["status"] == "failed" and oom["failed_epoch"] == 1
    assert oom["error"].startswith("out of memory at epoch 1") and "20.00 GiB" in oom["error"]
    assert oom["best_epoch"] == 0 and "recall@20" in oom["test"]  # the best result before the failure is kept
    assert by_model["MFBPR"]["status"] == "ok"


def test_unknown_model_and_bad_flags():
    with pytest.raises(UnknownModelError, match="known models: .*LightGCN"):
        get("LightGCNN")
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["epochs"])
    with pytest.raises(ConfigError, match="unknown configuration key"):
        check_sets({"epochz": 3}, [get("LightGCN")])
    assert run_all.main(["--models", "Nope", "--no-progress"]) == 2
    assert run_all.main(["--set", "learning_rat=1", "--models", "MFBPR", "--no-progress"]) == 2
    for bad in ("missing_imputation=median", "missing_mechanism=random", "imputation_k=0",
                "missing_ratio_per_modality={sound: 0.5}"):  # refused before any job runs
        assert run_all.main(["--set", bad, "--models", "VBPR", "--datasets", "synthetic:baby", "--quick",
                             "--no-progress", "--results-dir", "/nonexistent/never-written"]) == 2, bad
    with pytest.raises(SystemExit):
        run_all.main(["--protocol", "bogus"])


def test_config_layering_order():
    lgcn = get("LightGCN")
    amazon = resolve(lgcn, "baby")
    assert (amazon["n_ui_layers"], amazon["reg_weight"], amazon["eval_step"]) == (3, 1e-4, 3)
    tiktok = resolve(lgcn, "tiktok")  # dataset layer, then the model's best values
    assert (tiktok["n_ui_layers"], tiktok["reg_weight"], tiktok["eval_step"], tiktok["train_batch_size"]) == \
        (2, 0.0, 1, 4096)
    assert resolve(lgcn, "tiktok", {"reg_weight": 0.5})["reg_weight"] == 0.5  # --set wins
    quick = resolve(lgcn, "tiktok", {"epochs": 2}, quick=True)
    assert quick["epochs"] == 2 and quick["stopping_step"] == 10 and quick["grid_limit"] == 1  # --set wins over quick
    assert quick["train_batch_size"] == 256 and quick["eval_step"] == 1  # quick wins over dataset and model
    grid = expand_grid(resolve(get("MFBPR"), "tiktok"))
    assert sorted(s["reg_weight"] for s in grid) == [0.001, 0.01, 0.1, 1.0, 2.0]
    assert all(s["topk"] == [5, 10, 20, 50] for s in grid)  # list_keys are values, not grids


def test_list_models_shows_groups(capsys):
    assert run_all.main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "MFBPR" in out and "collaborative" in out


@pytest.mark.skipif(sys.platform != "linux", reason="uses POSIX signals")
def test_killed_grid_resumes_with_every_job_exactly_once(tmp_path):
    """Kill the runner while jobs are running, rerun it: every job ends up in the store exactly once."""
    cmd = [sys.executable, "run_all.py", "--protocol", "missing", "--datasets", "synthetic:tiktok",
           "--models", "MFBPR", "--seeds", "1,2,3,4", "--quick", "--scale", "0.03", "--set", "epochs=6",
           "--set", "grid_limit=null", "--data-root", str(tmp_path), "--results-dir",
           str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--jobs", "1"]
    results = tmp_path / "res" / "results.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-grid
    proc.wait()
    first = results.read_text().count("\n")
    assert 2 <= first < 20, "the kill should land mid-grid"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(line)["job_id"] for line in results.read_text().splitlines() if line.strip()]
    assert len(ids) == 20 and len(set(ids)) == 20  # 4 seeds x 5 reg_weight settings, once each


def test_missing_family_protocols_share_training_jobs(tmp_path):
    base = dict(datasets=["synthetic:tiktok"], models=["MFBPR"], seeds=[1], data_root=str(tmp_path),
                quick=True, scale=0.03, results_dir=str(tmp_path / "r"), cache_dir=None, jobs=0, progress=False)
    missing = {j["job_id"] for j in plan(RunOptions(protocols=["missing"], **base)).jobs}
    level = {j["job_id"] for j in plan(RunOptions(protocols=["missing_level"], **base)).jobs}
    ratio = plan(RunOptions(protocols=["missing_ratio"], **base)).jobs
    combined = plan(RunOptions(protocols=["missing", "missing_level", "missing_ratio"], **base)).jobs
    assert missing == level  # the level analysis reuses the missing runs
    assert sorted(j["missing_ratio"] for j in ratio) == [0.0, 0.2, 0.4, 0.6, 0.8]  # official 0.6 is in the sweep
    assert missing <= {j["job_id"] for j in ratio}
    assert len(combined) == len(ratio)  # nothing is trained twice
    assert all(j["protocol"] == "missing" for j in combined)


BATCH_CALLS: list[int] = []


@register("TestCountingBatches", defaults={})
class CountingModel(PopularityModel):
    def __init__(self, config, task):
        super().__init__(dict(config, pop_weight=0.0), task)

    def calculate_loss(self, users, pos, neg):
        BATCH_CALLS.append(len(users))
        return super().calculate_loss(users, pos, neg)


def test_max_batches_per_epoch_caps_epochs_and_projects_seconds(tmp_path):
    BATCH_CALLS.clear()
    opts = _opts(tmp_path, ["TestCountingBatches"], seeds=[1],
                 sets={"epochs": 2, "grid_limit": None, "train_batch_size": 16, "max_batches_per_epoch": 3})
    store = ResultStore(opts.results_dir)
    assert execute(plan(opts).jobs, store, n_workers=0, progress=False)["ok"] == 1
    rec = store.records()[0]
    assert BATCH_CALLS == [16] * 6                             # 3 batches in each of 2 epochs
    cap = rec["epoch_capped"]
    assert cap["batches_run"] == 3 and cap["batches_per_epoch"] > 3
    # projected whole-epoch seconds: measured seconds scaled by batches_per_epoch / batches_run
    res = TrainResult(train_seconds=[1.0, 3.0], batches_per_epoch=10, batches_run=2)
    assert res.epoch_fraction == pytest.approx(0.2)
    assert res.train_seconds_per_epoch == pytest.approx(10.0)
    assert res.train_seconds_per_epoch_median == pytest.approx(10.0)  # median 2.0 / 0.2
    assert TrainResult(train_seconds=[2.0], batches_per_epoch=5, batches_run=5).train_seconds_per_epoch == 2.0
    bad = _opts(tmp_path, ["TestCountingBatches"], seeds=[1],
                sets={"epochs": 1, "grid_limit": None, "max_batches_per_epoch": 0})
    with pytest.raises(ConfigError, match="max_batches_per_epoch must be null or an integer >= 1, got 0"):
        plan(bad)  # refused before any job starts


def test_null_valued_keys_do_not_change_job_identity(tmp_path):
    # a new option whose null default keeps the old behaviour must leave finished jobs finished
    from benchmarks.run.runner import identity_config
    cfg = {"epochs": 3, "max_batches_per_epoch": None, "resources_cpus": 2}
    assert identity_config(cfg) == {"epochs": 3}
    base = _opts(tmp_path, ["MFBPR"], seeds=[1])
    with_null = _opts(tmp_path, ["MFBPR"], seeds=[1], sets={"epochs": 2, "grid_limit": None,
                                                           "max_batches_per_epoch": None})
    with_cap = _opts(tmp_path, ["MFBPR"], seeds=[1], sets={"epochs": 2, "grid_limit": None,
                                                          "max_batches_per_epoch": 5})
    ids = [[j["job_id"] for j in plan(o).jobs] for o in (base, with_null, with_cap)]
    assert ids[0] == ids[1] and ids[0] != ids[2]


@pytest.mark.skipif(sys.platform != "linux", reason="uses POSIX signals and /proc")
def test_sigterm_stops_the_workers_and_the_grid_resumes(tmp_path):
    """SIGTERM to the runner alone (as a scheduler sends it): it exits with 130, its worker
    processes do not outlive it, and a rerun completes the grid with every job once."""
    cmd = [sys.executable, "run_all.py", "--protocol", "missing", "--datasets", "synthetic:tiktok",
           "--models", "MFBPR", "--seeds", "1,2,3,4", "--quick", "--scale", "0.03", "--set", "epochs=6",
           "--set", "grid_limit=null", "--data-root", str(tmp_path),
           "--results-dir", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
           "--jobs", "1"]
    results = tmp_path / "res" / "results.jsonl"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
        time.sleep(0.2)

    def children(pid):
        try:
            return {int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                    for c in (t / "children").read_text().split()}
        except OSError:
            return set()
    workers = children(proc.pid)
    try:
        assert workers, "the runner should have a worker process mid-grid"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            for w in workers:
                with contextlib.suppress(OSError):
                    os.kill(w, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err
    time.sleep(1.0)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and "Z" not in (Path(f"/proc/{w}/stat").read_text().split(")")[-1].split()[:1] or ["Z"])]
    assert not alive, f"worker processes outlived the runner: {alive}"
    first = results.read_text().count("\n")
    assert 1 <= first < 20
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(line)["job_id"] for line in results.read_text().splitlines() if line.strip()]
    assert len(ids) == 20 and len(set(ids)) == 20


def test_generated_imputation_runs_after_the_dgmrec_job_it_reads(tmp_path):
    """--protocol imputation: the generated-feature job of VBPR depends on the DGMRec job of the same
    dataset, ratio and seed, which saves its generated features; a lost file reruns the producer."""
    opts = _opts(tmp_path, ["VBPR"], protocols=["imputation"], seeds=[1], datasets=["synthetic:baby"],
                 sets={"epochs": 1, "imputation_sweep": ["mean", "generated"]})
    p = plan(opts)
    by = {(j["model"], j["config"]["missing_imputation"]): j for j in p.jobs}
    assert set(by) == {("VBPR", "mean"), ("VBPR", "generated"), ("DGMRec", "mean")}
    producer, dependent = by[("DGMRec", "mean")], by[("VBPR", "generated")]
    assert producer["save_generated"] and dependent["depends_on"] == [producer["job_id"]]
    assert dependent["config"]["generated_from"] == producer["grid_group"]
    assert any("DGMRec jobs are added" in line for line in p.banner)
    # the mean job is the plain missing-protocol job (same id)
    plain = plan(_opts(tmp_path, ["VBPR"], seeds=[1], datasets=["synthetic:baby"], sets={"epochs": 1}))
    assert by[("VBPR", "mean")]["job_id"] in {j["job_id"] for j in plain.jobs}
    store = ResultStore(opts.results_dir)
    order = []
    counts = execute(p.jobs[::-1], store, n_workers=0, progress=False, on_record=lambda r: order.append(r["model"]))
    assert counts["ok"] == 3 and order[-1] == "VBPR"
    recs = {(r["model"], r["config"]["missing_imputation"]): r for r in store.records()}
    assert recs[("VBPR", "generated")]["missing_axes"]["imputation"] == "generated"
    gen = store.load_generated(producer["job_id"])
    assert set(gen) == {"v", "t"} and all(len(ids) > 0 for ids, _ in gen.values())
    fq_gen = recs[("VBPR", "generated")]["extra"]["feature_quality"]
    fq_mean = recs[("VBPR", "mean")]["extra"]["feature_quality"]
    assert fq_gen["imputed_v_cosine"] != fq_mean["imputed_v_cosine"]
    assert "generated_v_cosine" in recs[("DGMRec", "mean")]["extra"]["feature_quality"]
    # the file is gone: the producer runs again before its dependent is retried
    (store.generated_dir / f"{producer['job_id']}.npz").unlink()
    store2 = ResultStore(opts.results_dir)
    rerun = [r for r in store2.records() if r["job_id"] != dependent["job_id"]]
    store2.path.write_text("".join(json.dumps(r) + "\n" for r in rerun))
    order.clear()
    execute(p.jobs, store2, n_workers=0, progress=False, on_record=lambda r: order.append(r["model"]))
    assert order == ["DGMRec", "VBPR"] and store2.has_generated(producer["job_id"])


def test_generated_imputation_fails_clearly_without_its_producer(tmp_path):
    opts = _opts(tmp_path, ["VBPR"], seeds=[1], datasets=["synthetic:baby"],
                 sets={"epochs": 1, "missing_imputation": "generated"})
    jobs = [j for j in plan(opts).jobs if j["model"] == "VBPR"]
    store = ResultStore(opts.results_dir)
    execute(jobs, store, n_workers=0, progress=False)
    rec = store.records()[0]
    assert rec["status"] == "failed" and "no finished DGMRec job saved generated features" in rec["error"]
