"""What a first run promises: ItemPop as the floor, training to early stopping, checked flags,
a data root that must exist, a non-zero exit when jobs fail, and a results folder whose tables
keep every run made into it."""
import json

import numpy as np
import pytest
import torch

import run_all
from baselines.itempop import ItemPop
from benchmarks import experiment
from benchmarks.report import writer
from benchmarks.run.config import ConfigError, check_values, model_rule
from benchmarks.run.runner import RunOptions, execute, plan
from benchmarks.run.store import ResultStore
from models.base import Recommender
from models.registry import get, register

TINY = ["--datasets", "synthetic:tiktok", "--scale", "0.03", "--seeds", "1", "--no-progress", "--jobs", "0"]


class _Task:
    n_users, n_items, device = 2, 5, torch.device("cpu")
    train_items = np.array([3, 3, 1, 4, 1, 3, 0])

    def item_degree(self):
        return np.bincount(self.train_items, minlength=self.n_items)


def test_itempop_ranks_by_training_count_and_breaks_ties_by_id():
    # counts: item0 1, item1 2, item2 0, item3 3, item4 1 -> order 3, 1, 0, 4, 2 (0 before 4: lower id)
    scores = ItemPop({}, _Task()).full_sort_predict(torch.tensor([0, 1]))
    assert scores.shape == (2, 5)
    assert torch.argsort(scores[0], descending=True, stable=True).tolist() == [3, 1, 0, 4, 2]
    assert len(set(scores[0].tolist())) == 5  # no ties left for topk to break arbitrarily
    assert get("ItemPop").group == "non-personalised"


def test_default_schedule_stops_early_and_itempop_is_not_trained(tmp_path):
    opts = RunOptions(protocols=["new_items"], datasets=["synthetic:tiktok"], models=["ItemPop", "MFBPR"], seeds=[1],
                      quick=True, scale=0.03, results_dir=str(tmp_path), cache_dir=None, jobs=0, progress=False)
    jobs = plan(opts).jobs
    assert all("max_train_seconds" not in j["config"] for j in jobs)  # no wall-clock cap exists
    store = ResultStore(tmp_path)
    execute(jobs, store, n_workers=0, progress=False)
    by_model = {r["model"]: r for r in store.records()}
    pop, mf = by_model["ItemPop"], by_model["MFBPR"]
    assert pop["status"] == mf["status"] == "ok"
    assert pop["stop_reason"] == "not_trained" and pop["epochs_run"] == 0
    assert mf["stop_reason"] == "early_stopping" and mf["epochs_run"] < mf["config"]["epochs"]
    # stopped after stopping_step + 1 evaluations without improvement on the best epoch
    assert mf["epochs_run"] == mf["best_epoch"] + 1 + mf["config"]["stopping_step"] + 1


def test_stop_reason_says_when_the_epoch_budget_ran_out(tmp_path):
    opts = RunOptions(protocols=["missing"], datasets=["synthetic:tiktok"], models=["MFBPR"], seeds=[1],
                      quick=True, scale=0.03, results_dir=str(tmp_path), cache_dir=None, jobs=0, progress=False,
                      sets={"epochs": 2, "stopping_step": 50})
    store = ResultStore(tmp_path)
    execute(plan(opts).jobs, store, n_workers=0, progress=False)
    (rec,) = store.records()
    assert rec["stop_reason"] == "epoch_budget" and rec["epochs_run"] == 2


@pytest.mark.parametrize("value, message", [
    ("epochs=abc", "--set epochs='abc': epochs must be an integer >= 1, got 'abc'"),
    ("epochs=0", "epochs must be an integer >= 1, got 0"),
    ("epochs=-1", "epochs must be an integer >= 1, got -1"),
    ("learning_rate=-0.01", "learning_rate must be a number > 0, got -0.01"),
    ("learning_rate=[0.001, -1]", "learning_rate must be a number > 0, got -1"),
    ("deterministic=maybe", "deterministic must be true or false"),
    ("n_ui_layers=1.5", "n_ui_layers must be an integer >= 0, got 1.5"),
    ("reg_weight=-1", "reg_weight must be a number >= 0, got -1"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_set_values_are_checked_before_any_job(value, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "execute", lambda *a, **k: pytest.fail("a job started"))
    code = run_all.main(["--set", value, "--models", "LightGCN", "--results-dir", str(tmp_path)] + TINY)
    assert code == 2
    assert message in capsys.readouterr().err


def test_model_rules_come_from_the_model_defaults():
    assert model_rule("dropout", 0.3) == "a number in [0, 1]"
    assert model_rule("knn_k", 10) == "an integer >= 0"
    assert model_rule("cl_temperature", 0.2) == "a number > 0"
    assert model_rule("reg_weight", 0) == "a number >= 0"  # an integer default does not make a count
    assert model_rule("eval_graph", "initial") == "a string"
    assert model_rule("fix_x", False) == "true or false"
    assert model_rule("penalty_coeff", [1000, 500]) == "a number >= 0"  # a grid: its elements
    check_values({"weight_size": [64, 64]}, {"weight_size": [64, 64]}, {}, "x")  # a list-valued parameter
    with pytest.raises(ConfigError, match=r"configuration key 'knn_k' \(M on baby\): knn_k must be an integer"):
        check_values({"knn_k": "ten"}, {"knn_k": 10}, {}, "M on baby")


def test_every_registered_setting_passes_its_own_checks():
    from benchmarks.core.protocols import ALL_PROTOCOL_NAMES
    from models.registry import names
    datasets = [f"synthetic:{k}" for k in ("baby", "sports", "clothing", "elec", "tiktok")]
    for quick in (True, False):
        plan(RunOptions(protocols=list(ALL_PROTOCOL_NAMES), datasets=datasets, models=names(), quick=quick,
                        scale=0.01, results_dir=None, cache_dir=None))


def test_a_data_root_that_does_not_exist_is_an_error(tmp_path, capsys):
    assert run_all.main(["--data-root", str(tmp_path / "nowhere"), "--models", "MFBPR", "--quick",
                         "--no-progress"]) == 2
    assert f"--data-root {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    # an explicit root must hold the datasets asked for: no silent replica
    assert run_all.main(["--data-root", str(tmp_path), "--datasets", "baby", "--models", "MFBPR",
                         "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"dataset folder {tmp_path / 'baby'} not found" in err and "synthetic:baby" in err


def test_quick_says_it_leaves_real_data_unused(tmp_path, capsys, monkeypatch):
    (tmp_path / "tiktok").mkdir()
    monkeypatch.setattr(experiment, "execute", lambda jobs, store, **kw: {"planned": len(jobs), "skipped": 0,
                                                                          "ok": 0, "failed": 0})
    monkeypatch.setattr(writer, "write_report", lambda *a, **k: [])
    assert run_all.main(["--data-root", str(tmp_path), "--datasets", "tiktok", "--models", "MFBPR", "--quick",
                         "--scale", "0.03", "--results-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"--quick runs synthetic replicas: the data in {tmp_path / 'tiktok'} is not used" in out


@register("TestAlwaysFails", defaults={})
class AlwaysFails(Recommender):
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task):
        super().__init__(config, task)
        self.w = torch.nn.Parameter(torch.zeros(1))

    def calculate_loss(self, users, pos, neg):
        raise RuntimeError("deliberate failure")

    def full_sort_predict(self, users):
        return self.w.expand(len(users), self.n_items)


def test_a_run_with_failed_jobs_exits_non_zero_and_names_them(tmp_path, capsys):
    code = run_all.main(["--models", "TestAlwaysFails,MFBPR", "--quick", "--set", "epochs=2",
                         "--results-dir", str(tmp_path)] + TINY)
    assert code == 1
    err = capsys.readouterr().err
    assert "1 job(s) failed" in err and "TestAlwaysFails on synthetic:tiktok seed 1" in err
    assert "deliberate failure" in err


def test_a_second_run_adds_to_the_tables_of_the_first(tmp_path):
    common = ["--quick", "--set", "epochs=2", "--results-dir", str(tmp_path)] + TINY
    assert run_all.main(["--models", "MFBPR"] + common) == 0
    assert run_all.main(["--models", "LightGCN"] + common) == 0
    for table in ("missing.md", "cost.md", "cost.csv", "missing.csv"):
        text = (tmp_path / table).read_text()
        assert "MFBPR" in text and "LightGCN" in text, table
    # a later run of the same cell under another setting replaces it in the tables and is named
    assert run_all.main(["--models", "MFBPR", "--quick", "--set", "epochs=3", "--results-dir", str(tmp_path)]
                        + TINY) == 0
    rows = [r for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())]
    assert sum(r["model"] == "MFBPR" for r in rows) == 2
    csv = (tmp_path / "cost.csv").read_text().splitlines()
    assert sum(line.split(",")[1:2] == ["MFBPR"] or ",MFBPR," in line for line in csv) == 1
    assert "left out of the tables" in (tmp_path / "index.md").read_text()
