"""The fidelity verdicts: ratio, pooled seed spread and z against hand-computed values."""
import math

import pytest

from benchmarks.experiments.fidelity import compare, fidelity_rows, official_setting


def test_compare_single_official_seed_by_hand():
    # ours 0.10, 0.11, 0.12 (sd 0.01); official 0.09 (one seed): se = 0.01 * sqrt(1/3 + 1)
    c = compare([0.10, 0.11, 0.12], [0.09])
    assert c["ours"] == pytest.approx(0.11)
    assert c["sd"] == pytest.approx(0.01)
    assert c["ratio"] == pytest.approx(0.11 / 0.09)
    assert c["z"] == pytest.approx(0.02 / (0.01 * math.sqrt(4 / 3)))
    assert c["verdict"] == "noise"        # ratio 1.22 but z = 1.73 < 2
    assert compare([0.10, 0.11, 0.12], [0.08])["verdict"] == "GAP"     # z = 0.03 / 0.01155 = 2.60


def test_compare_pools_spread_when_official_has_seeds():
    # deviations ours (-0.01, 0, 0.01), official (-0.02, 0.02): pooled var = (2e-4 + 8e-4) / 3
    c = compare([0.10, 0.11, 0.12], [0.08, 0.12])
    s = math.sqrt(1e-3 / 3)
    assert c["sd"] == pytest.approx(s)
    assert c["official"] == pytest.approx(0.10)
    assert c["z"] == pytest.approx(0.01 / (s * math.sqrt(1 / 3 + 1 / 2)))
    assert c["verdict"] == "noise"        # ratio 1.10, |z| 0.77
    assert compare([0.100, 0.101, 0.102], [0.099])["verdict"] == "ok"


def _rec(model, seed, r, n, valid=0.1, group=None, loss=1.0):
    return {"model": model, "seed": seed, "protocol": "missing", "dataset_kind": "tiktok",
            "data_source": "reference", "status": "ok", "job_id": f"{model}-{seed}-{group}-{valid}",
            "grid_group": group or f"{model}-{seed}", "valid": {"recall@20": valid},
            "test": {"recall@20": r, "ndcg@20": n}, "curve": [{"epoch": 0, "train_loss": loss}]}


def test_rows_select_grid_by_validation_and_skip_models_without_official():
    records = [_rec("M", 999, 0.10, 0.04, valid=0.2, group="g999"), _rec("M", 999, 0.50, 0.50, valid=0.1, group="g999"),
               _rec("M", 42, 0.12, 0.05, group="g42"), _rec("X", 999, 0.1, 0.1)]
    for rec, lr in zip(records[:2], (0.01, 0.1)):  # two settings of a learning-rate grid
        rec.update(grid_keys=["learning_rate"], config={"learning_rate": lr})
    official = {"M": [{"seed": 999, "test": {"recall@20": 0.11, "ndcg@20": 0.045},
                       "curve": [{"epoch": 0, "train_loss": 2.0}]}]}
    rows = fidelity_rows(records, official)
    assert [r["model"] for r in rows] == ["M"]
    row = rows[0]
    assert row["seeds"] == "42,999"
    assert row["ratio R@20"] == pytest.approx(0.11 / 0.11)      # the 0.50 setting lost on validation
    assert row["R@20"] == "ok"
    assert row["epoch-0 loss ours/official"] == "1 / 2"
    assert row["max loss diff"] == "50.0%"


def test_grid_compared_at_the_official_setting():
    # the official MFBPR figure is its reg_weight=0.01 setting; ours picked 0.1 by validation
    def rec(seed, reg, r, valid):
        out = _rec("MFBPR", seed, r, r / 2, valid=valid, group=f"g{seed}")
        out.update(job_id=f"{seed}-{reg}", grid_size=2, grid_keys=["reg_weight"], config={"reg_weight": reg})
        return out
    records = [rec(999, 0.01, 0.022, 0.1), rec(999, 0.1, 0.05, 0.2), rec(42, 0.01, 0.024, 0.1), rec(42, 0.1, 0.06, 0.2)]
    official = {"MFBPR": [{"seed": 999, "test": {"recall@20": 0.022, "ndcg@20": 0.011},
                           "grid_selected": "['reg_weight', 'missing_imputation', 'seed']=(0.01, 1, 999)"}]}
    row = fidelity_rows(records, official)[0]
    assert official_setting(official["MFBPR"][0]) == {"reg_weight": 0.01}
    assert row["grid setting"] == "official's: reg_weight=0.01"
    assert row["ratio R@20"] == pytest.approx(0.023 / 0.022, abs=1e-3)
    official["MFBPR"][0].pop("grid_selected")            # no official setting: ours by validation
    assert fidelity_rows(records, official)[0]["ratio R@20"] == pytest.approx(0.055 / 0.022, abs=1e-3)


def test_curve_comparison_by_hand():
    from benchmarks.experiments.fidelity import curve_comparison
    ours = {"curve": [{"epoch": 0, "train_loss": 10.0, "test_recall@20": 0.01},
                      {"epoch": 1, "train_loss": 8.8, "test_recall@20": 0.064}]}
    off = {"best_epoch": 1, "test": {"recall@20": 0.0598},
           "curve": [{"epoch": 0, "train_loss": 10.0}, {"epoch": 1, "train_loss": 8.0}]}
    got = curve_comparison(ours, off)
    assert got["epoch-0 loss ours/official"] == "10 / 10"
    assert got["max loss diff"] == "10.0%"                       # |8.8 - 8| / 8
    assert got["R@20 at official best epoch (ratio)"] == round(0.064 / 0.0598, 3)


def test_a_rerun_seed_counts_once_with_its_newest_record():
    records = [_rec("M", 999, 0.50, 0.20), _rec("M", 999, 0.10, 0.04), _rec("M", 42, 0.12, 0.05)]
    records[1]["job_id"] = "newer-id-of-the-same-run"
    official = {"M": [{"seed": 999, "test": {"recall@20": 0.11, "ndcg@20": 0.045}}]}
    row = fidelity_rows(records, official)[0]
    assert row["seeds"] == "42,999" and row["ratio R@20"] == pytest.approx(1.0)


def test_official_results_file_errors_name_the_file(tmp_path):
    from benchmarks.experiments.bench_common import official_records
    from data_prep.errors import DataError
    assert official_records(tmp_path / "absent.json") == []
    bad = tmp_path / "bad.json"
    bad.write_text('[{"model": "X"')                                  # truncated
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        official_records(bad)
    bad.write_text('{"model": "X"}')                                  # an object, not a list
    with pytest.raises(DataError, match="bad.json: expected a JSON list of run records"):
        official_records(bad)


def test_report_only_without_a_store_says_so(tmp_path):
    from benchmarks.experiments.fidelity import main
    official = tmp_path / "official.json"
    official.write_text("[]")
    with pytest.raises(SystemExit, match="results.jsonl: no results store to report on"):
        main(["--report-only", "--out", str(tmp_path), "--official", str(official)])


def test_malformed_extra_seeds_file_is_named(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    official, extra = tmp_path / "official.json", tmp_path / "extra.json"
    official.write_text("[]")
    extra.write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "benchmarks.experiments.fidelity", "--report-only", "--official", str(official),
                           "--official-extra", str(extra), "--out", str(tmp_path / "out")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"{extra}: not valid JSON" in done.stderr and "Traceback" not in done.stderr


def test_cli_names_malformed_seeds(tmp_path):
    from benchmarks.experiments.fidelity import main
    official = tmp_path / "official.json"
    official.write_text("[]")
    with pytest.raises(SystemExit, match="--seeds must be comma-separated integers, got '1;2'"):
        main(["--official", str(official), "--official-extra", "none", "--models", "SGL", "--seeds", "1;2",
              "--out", str(tmp_path / "out")])


def test_compare_gives_each_sides_own_seed_spread_by_hand():
    c = compare([0.10, 0.11, 0.12], [0.08, 0.12])
    assert c["sd_ours"] == pytest.approx(0.01)                  # sqrt((1e-4 + 0 + 1e-4) / 2)
    assert c["sd_official"] == pytest.approx(math.sqrt(8e-4))   # sqrt((4e-4 + 4e-4) / 1)
    assert math.isnan(compare([0.1, 0.2], [0.15])["sd_official"])


def _official(model, seed, r, n, **extra):
    return dict({"model": model, "dataset": "baby", "codebase": "mmrec", "seed": seed, "status": "ok", "epochs": 15,
                 "missing_ratio": 0.0, "test": {"recall@20": r, "ndcg@20": n},
                 "schedule": {"epochs": 15, "eval_step": 1, "stopping_step": 20,
                              "learning_rate_scheduler": [1.0, 50], "train_batch_size": 2048}}, **extra)


def test_records_file_comparison_by_hand(tmp_path):
    """Hand-made MMRec records on Baby against hand-made records of ours at missing ratio 0: the
    ratio, z and verdict of the rows; ours at another ratio or on another dataset is left out."""
    import json
    from benchmarks.experiments.fidelity import records_runs
    path = tmp_path / "mmrec-baby.json"
    path.write_text(json.dumps([_official("FREEDOM", 999, 0.060, 0.030), _official("FREEDOM", 42, 0.064, 0.032),
                                _official("FREEDOM", 2023, 0.062, 0.031),
                                dict(_official("FREEDOM", 7, 0.5, 0.5), status="failed"),
                                dict(_official("FREEDOM", 999, 0.9, 0.9), dataset="sports")]))
    codebase, runs = records_runs(path, "baby")
    assert codebase == "mmrec" and sorted(r["seed"] for r in runs["FREEDOM"]) == [42, 999, 2023]

    def ours(seed, r, ratio=0.0, kind="baby"):
        rec = _rec("FREEDOM", seed, r, r / 2, group=f"g{seed}-{ratio}-{kind}")
        rec.update(dataset_kind=kind, missing_ratio=ratio)
        return rec
    records = [ours(999, 0.058), ours(42, 0.060), ours(2023, 0.062), ours(999, 0.2, ratio=0.666),
               ours(999, 0.3, kind="tiktok")]
    row = fidelity_rows(records, runs, "baby", 0.0)[0]
    # ours 0.058, 0.060, 0.062 (sd 0.002), official 0.060, 0.064, 0.062 (sd 0.002): pooled s = 0.002,
    # se = 0.002 * sqrt(2/3), ratio 0.060 / 0.062, z = -0.002 / se = -1.22
    assert row["seeds"] == "42,999,2023"
    assert row["ratio R@20"] == round(0.060 / 0.062, 3)
    assert row["z R@20"] == round(-0.002 / (0.002 * math.sqrt(2 / 3)), 2)
    assert row["R@20"] == "ok"                                         # within 5% (0.968)
    assert row["official R@20"] == "0.0620 ± 0.0020 (n=3)" and row["ours R@20"] == "0.0600 ± 0.0020 (n=3)"
    path.write_text(json.dumps([_official("FREEDOM", 999, 0.06, 0.03), dict(_official("LightGCN", 1, 0.1, 0.1),
                                                                             codebase="dgmrec-release")]))
    with pytest.raises(SystemExit, match="several code bases"):
        records_runs(path, "baby")
    with pytest.raises(SystemExit, match="no finished official run on clothing"):
        records_runs(path, "clothing")


def test_our_side_takes_the_official_schedule_ratio_and_settings():
    from benchmarks.experiments.fidelity import our_sets, setting_differences
    runs = [_official("LightGCN", 999, 0.06, 0.03, sets={"n_layers": 2, "unknown_to_ours": 1},
                      settings={"n_layers": 2, "reg_weight": 0.5, "is_multimodal_model": False})]
    sets = our_sets(runs, "mmrec", "LightGCN", {"train_batch_size": 1024})
    # MMRec's schedule (eval_step 1, its stopping step), ratio 0, n_layers under our name, then --set
    assert sets == {"epochs": 15, "missing_ratio": 0.0, "eval_step": 1, "stopping_step": 20,
                    "learning_rate_scheduler": [1.0, 50], "train_batch_size": 1024, "n_ui_layers": 2}
    diff = setting_differences(runs[0], "mmrec", "LightGCN", sets)
    assert diff == ["reg_weight official 0.5, ours 0.0001"]          # n_layers equal under our name
    with pytest.raises(SystemExit, match="different epochs"):
        our_sets(runs + [dict(runs[0], epochs=2)], "mmrec", "LightGCN", {})
    # a DGMRec-release record from before the ratio was recorded: the release's ratio of its dataset
    old = {"model": "BM3", "dataset": "tiktok", "seed": 42, "epochs": 15, "test": {}}
    assert our_sets([old], "dgmrec-release", "BM3", {}) == {"epochs": 15, "missing_ratio": 0.6}


def test_ours_evaluates_on_the_release_cadence():
    """The DGMRec release evaluates every 3 epochs on the Amazon datasets (its overall.yaml) and
    every epoch on TikTok (its tiktok.yaml); so does every model of ours, which fidelity runs
    against the release rely on."""
    from benchmarks.run.config import resolve
    from benchmarks.run.discovery import model_entries
    for entry in model_entries():
        for kind in ("baby", "sports", "clothing"):
            assert resolve(entry, kind)["eval_step"] == 3, (entry.name, kind)
        assert resolve(entry, "tiktok")["eval_step"] == 1, entry.name
