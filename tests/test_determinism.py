"""--deterministic: the same job twice gives identical metrics and curves on CPU; records carry provenance."""
from benchmarks.runner import RunOptions, plan
from benchmarks.jobs import run_job


def test_same_job_twice_is_identical(tmp_path):
    opts = RunOptions(protocols=["new_items"], datasets=["synthetic:baby"], models=["LightGCN"], seeds=[3],
                      data_root=str(tmp_path / "none"), quick=True, scale=0.03, results_dir=str(tmp_path / "r"),
                      cache_dir=None, jobs=0, progress=False,
                      sets={"deterministic": True, "epochs": 3, "max_train_seconds": None})
    (spec,) = plan(opts).jobs
    a, b = run_job(spec), run_job(spec)
    assert a["status"] == b["status"] == "ok"
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert [c["train_loss"] for c in a["curve"]] == [c["train_loss"] for c in b["curve"]]
    env = a["environment"]
    assert {"torch", "numpy", "python", "device"} <= set(env) and env["device"] == "cpu"
    assert a["seed"] == 3 and a["config"]["seed"] == 3
