"""The default run is deterministic: the same job twice gives identical numbers, for every model."""
import pytest
import torch

from benchmarks.run.jobs import run_job
from benchmarks.run.runner import RunOptions, plan
from models.registry import entries


def _suite_models():
    """Every model of the suite's packages (test modules register stand-ins of their own)."""
    return [e.name for e in entries() if e.cls.__module__.split(".")[0] in ("models", "baselines")]


def _spec(tmp_path, model, protocol, dataset):
    opts = RunOptions(protocols=[protocol], datasets=[dataset], models=[model], seeds=[3], quick=True, scale=0.03,
                      results_dir=str(tmp_path / "r"), cache_dir=None, jobs=0, progress=False,
                      sets={"epochs": 2, "train_batch_size": 64})
    return plan(opts).jobs[0]


@pytest.mark.parametrize("model", _suite_models())
def test_same_job_twice_is_identical(tmp_path, model):
    spec = _spec(tmp_path, model, "new_items", "synthetic:tiktok")
    assert spec["config"]["deterministic"] is True  # the default, not an opt-in
    before = torch.get_num_threads()
    a, b = run_job(spec), run_job(spec)
    assert a["status"] == b["status"] == "ok", a.get("error") or b.get("error")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [c["train_loss"] for c in a["curve"]] == [c["train_loss"] for c in b["curve"]]
    assert a["environment"]["threads"] == 1
    assert torch.get_num_threads() == before  # the caller's thread count is restored


def test_records_carry_provenance(tmp_path):
    rec = run_job(_spec(tmp_path, "LightGCN", "missing", "synthetic:baby"))
    env = rec["environment"]
    assert {"torch", "numpy", "python", "device"} <= set(env) and env["device"] == "cpu"
    assert rec["seed"] == 3 and "seed" not in rec["config"]  # one copy: the record's own field
    assert rec["fingerprint"] and rec["code_version"]
