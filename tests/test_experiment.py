"""The Python entry point: one call plans, runs and returns the records; the command line is a
thin layer over it (same jobs, same numbers)."""
import json

import pytest

import run_all
from benchmarks import experiment, run_experiment
from benchmarks.experiment import Experiment, protocol_names
from benchmarks.run.runner import RunOptions, plan
from models.registry import UnknownModelError

TINY = dict(datasets=["synthetic:tiktok"], seeds=[1], overrides={"epochs": 2}, quick=True, scale=0.02, jobs=0)


def test_run_experiment_returns_the_record_of_every_planned_job(tmp_path):
    records = run_experiment(["MFBPR", "ItemPop"], protocols="missing", results_dir=tmp_path / "r", cache_dir=None,
                             write_tables=False, **TINY)
    planned = plan(RunOptions(protocols=["missing"], datasets=TINY["datasets"], models=["MFBPR", "ItemPop"], seeds=[1],
                              quick=True, scale=0.02, sets={"epochs": 2}, results_dir=str(tmp_path / "r"),
                              cache_dir=None)).jobs
    assert [r["job_id"] for r in records] == [j["job_id"] for j in planned]
    assert [r["model"] for r in records] == ["MFBPR", "ItemPop"]
    assert all(r["status"] == "ok" and r["seed"] == 1 and r["missing_ratio"] == 0.6 for r in records)
    assert records[0]["epochs_run"] == 2 and records[1]["stop_reason"] == "not_trained"
    assert "recall@20" in records[0]["test"]
    stored = [json.loads(line) for line in (tmp_path / "r" / "results.jsonl").read_text().splitlines()]
    assert {r["job_id"] for r in stored} == {r["job_id"] for r in records}
    assert not (tmp_path / "r" / "missing.md").exists()  # no tables asked for


def test_a_second_call_returns_the_stored_records_without_running_and_writes_the_tables(tmp_path):
    first = run_experiment(["MFBPR"], results_dir=tmp_path, cache_dir=None, write_tables=False, **TINY)
    outcome = Experiment(["MFBPR"], results_dir=tmp_path, cache_dir=None, **TINY).run(write_tables=True)
    assert outcome.counts == {"planned": 1, "skipped": 1, "ok": 0, "failed": 0}
    assert outcome.records == first and outcome.failed == []
    assert tmp_path / "missing.md" in outcome.tables and "MFBPR" in (tmp_path / "missing.md").read_text()


def test_the_command_line_gives_the_same_jobs_and_numbers(tmp_path):
    api = run_experiment(["MFBPR"], results_dir=tmp_path / "api", cache_dir=tmp_path / "c1", write_tables=False,
                         **TINY)
    assert run_all.main(["--models", "MFBPR", "--datasets", "synthetic:tiktok", "--seeds", "1", "--set", "epochs=2",
                         "--quick", "--scale", "0.02", "--jobs", "0", "--no-progress", "--cache-dir",
                         str(tmp_path / "c2"), "--results-dir", str(tmp_path / "cli")]) == 0
    (cli,) = [json.loads(line) for line in (tmp_path / "cli" / "results.jsonl").read_text().splitlines()]
    (rec,) = api
    assert cli["job_id"] == rec["job_id"]
    assert (cli["valid"], cli["test"], cli["curve"]) == (rec["valid"], rec["test"], rec["curve"])


def test_a_bad_request_is_refused_before_any_job_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "execute", lambda *a, **k: pytest.fail("a job started"))
    with pytest.raises(UnknownModelError, match="unknown model 'NoSuchModel'"):
        Experiment(["NoSuchModel"], results_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        Experiment(["MFBPR"], results_dir=tmp_path, device="gpu", **TINY)
    with pytest.raises(ValueError, match="jobs must be >= 0"):
        Experiment(["MFBPR"], results_dir=tmp_path, **dict(TINY, jobs=-1))
    assert not (tmp_path / "results.jsonl").exists()


def test_protocol_names_expand_all_once():
    assert protocol_names("new_items") == ["new_items"]
    assert protocol_names("all") == ["missing", "new_items", "missing_level", "missing_ratio", "retrieval"]
    assert protocol_names(["missing", "all", "imputation"]) == ["missing", "new_items", "missing_level",
                                                                "missing_ratio", "retrieval", "imputation"]
