"""Grid wall-time estimate: the formula against hand-computed numbers, scaling and store reading."""
import json

import pytest

from benchmarks.experiments.grid_estimate import epochs_run, estimate, measured_costs, recorded_best_epochs, report


def test_epochs_run_is_best_epoch_plus_the_early_stopping_wait_capped_at_epochs():
    assert epochs_run(500, 3, 25, 100) == 100 + 26 * 3
    assert epochs_run(500, 1, 20, 100) == 121
    assert epochs_run(150, 3, 25, 100) == 150


def test_estimate_by_hand():
    costs = {("LightGCN", "baby"): {"s_epoch": 2.0, "eval_s": 1.0, "setup_s": 5.0, "source": "measured"},
             ("LightGCN", "tiktok"): {"s_epoch": 1.0, "eval_s": 0.5, "setup_s": 3.0, "source": "measured"}}
    rows, totals = estimate(costs, best_epoch=100, models=["LightGCN"], datasets=("baby", "sports", "tiktok"))
    by = {r["dataset"]: r for r in rows}
    # baby: one setting; E = 100 + 26*3 = 178 epochs, 178/3 evaluations; x 5 seeds x 2 protocols
    baby = (178 * 2.0 + 178 / 3 * 1.0 + 5.0) * 10
    assert by["baby"]["hours"] == pytest.approx(baby / 3600, abs=1e-3)
    # sports has no record: baby's costs x (296337 / 160792) interactions (nearest two-modality dataset)
    f = 296337 / 160792
    sports = (178 * 2.0 * f + 178 / 3 * 1.0 * f + 5.0) * 10
    assert "scaled from baby" in by["sports"]["source"]
    # tiktok: eval_step 1, stopping 20: E = 121
    tiktok = (121 * 1.0 + 121 * 0.5 + 3.0) * 10
    assert totals["seconds"] == pytest.approx(baby + sports + tiktok)
    assert totals["upper_seconds"] == pytest.approx((500 * 2 + 500 / 3 + 5) * 10 + (500 * 2 * f + 500 / 3 * f + 5) * 10
                                                    + (500 + 500 * 0.5 + 3) * 10)
    text = report(rows, totals, {"1": 1.0, "2": 1.6}, 100)
    assert f"{(baby + sports + tiktok) / 1.6 / 3600:.1f} h" in text


def test_grid_settings_and_unmeasured_datasets():
    costs = {("MFBPR", "baby"): {"s_epoch": 1.0, "eval_s": 0.0, "setup_s": 0.0, "source": "measured"}}
    rows, totals = estimate(costs, models=["MFBPR"], datasets=("baby", "tiktok"))
    by = {r["dataset"]: r for r in rows}
    assert by["baby"]["settings"] == 1 and by["baby"]["jobs"] == 10
    assert by["tiktok"]["source"] == "not measured" and by["tiktok"]["jobs"] == 5 * 5 * 2  # 5-setting grid
    assert totals["not_measured"] == ["MFBPR/tiktok"]


def test_costs_and_best_epochs_come_from_gpu_records(tmp_path):
    recs = [{"model": "BM3", "dataset": "tiktok", "dataset_kind": "tiktok", "status": "ok",
             "environment": {"device": "cuda:0", "gpu": "H200"}, "train_seconds_per_epoch_median": 0.2,
             "valid_eval_seconds": 0.1, "eval_seconds": 0.1, "setup_seconds": 2, "best_epoch": 40,
             "stopped_early": True},
            {"model": "BM3", "dataset": "baby", "dataset_kind": "baby", "status": "ok",
             "environment": {"device": "cpu"}, "train_seconds_per_epoch_median": 9.0},        # CPU: ignored
            {"model": "VBPR", "dataset": "baby", "dataset_kind": "baby", "status": "ok", "epoch_capped": {},
             "environment": {"device": "cuda"}, "train_seconds_per_epoch_median": 1.0}]       # projected: ignored
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    costs = measured_costs([tmp_path])
    assert list(costs) == [("BM3", "tiktok")] and costs[("BM3", "tiktok")]["eval_s"] == pytest.approx(0.2)
    assert recorded_best_epochs([tmp_path]) == {("BM3", "tiktok"): 40.0}
