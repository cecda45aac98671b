"""The report sections of the missing-data axes on hand-made records: significance against every
baseline (Holm), selection optimism, the imputation tables, per-group results and exposure, captions."""
import numpy as np
import pytest
from scipy import stats as sps

from benchmarks.report import groups as report_groups
from benchmarks.report import imputation as report_imputation
from benchmarks.report import significance as report_stats
from benchmarks.report.axes import primary_records
from benchmarks.report.stats import holm
from benchmarks.report.writer import write_report
from benchmarks.run.store import ResultStore

GROUP = {"LightGCN": "collaborative", "VBPR": "multi-modal", "BM3": "multi-modal", "DGMRec": "proposed"}
USERS = np.arange(40)


def rec(model, imputation="mean", mechanism=None, test=None, seed=1, **kw):
    cfg = {"valid_metric": "recall@20", "epochs": 3, "missing_imputation": imputation}
    if mechanism:
        cfg["missing_mechanism"] = mechanism
    test = test or {"recall@20": 0.1, "ndcg@20": 0.05}
    jid = f"{model}-{imputation}-{mechanism}-{seed}" + kw.pop("suffix", "")
    out = dict(job_id=jid, grid_group=kw.pop("grid_group", jid), model=model, group=GROUP[model], dataset="baby",
               dataset_kind="baby", data_source="reference", protocol="missing", missing_ratio=0.666, seed=seed,
               status="ok", valid=kw.pop("valid", dict(test)), test=test, config=cfg, extra={}, extra_counts={},
               missing_axes={"imputation": imputation, "mechanism": mechanism or "uniform",
                             "filled_rows": {} if GROUP[model] == "collaborative" else {"v": {"filled": 5, "fallback": 0}}})
    out.update(kw)
    return out


def test_dgmrec_against_every_baseline_with_holm(tmp_path):
    store = ResultStore(tmp_path)
    rng = np.random.default_rng(0)
    base = {"LightGCN": 0.08, "VBPR": 0.095, "BM3": 0.05, "DGMRec": 0.10}
    vectors, recs = {}, []
    for model, level in base.items():
        v = np.clip(level + rng.normal(0, 0.05, len(USERS)), 0, 1)
        vectors[model] = v
        r = rec(model, test={"recall@20": float(v.mean())})
        store.append(r)
        store.save_per_user(r["job_id"], USERS, {"recall@20": v})
        recs.append(r)
    sig, notes = report_stats.significance_frame(recs, store, metrics=("recall@20",))
    assert not notes and list(sig["baseline"]) == ["LightGCN", "VBPR", "BM3"]
    raw = [sps.ttest_rel(vectors["DGMRec"], vectors[m]).pvalue for m in sig["baseline"]]
    np.testing.assert_allclose(sig["p"], raw)
    np.testing.assert_allclose(sig["p_holm"], holm(raw))
    d = vectors["DGMRec"] - vectors["BM3"]
    assert sig.loc[sig["baseline"] == "BM3", "d_z"].item() == pytest.approx(d.mean() / d.std(ddof=1))
    assert (sig["n_compared"] == 3).all()
    ci = report_stats.ci_frame(recs, store, metrics=("recall@20",), n_boot=200)
    assert ((ci["ci_low"] <= ci["mean"]) & (ci["mean"] <= ci["ci_high"])).all()
    files = {p.name for p in write_report(store.records(), tmp_path, ["missing"], store)}
    assert {"missing_significance.md", "missing_ci.md", "missing_selection.md"} <= files
    md = (tmp_path / "missing_significance.md").read_text()
    assert "Holm-adjusted over the 3 baselines" in md and "Imputation of masked features: mean" in md


def test_selection_optimism_by_hand():
    a = rec("VBPR", grid_group="g", suffix="a", valid={"recall@20": 0.30}, test={"recall@20": 0.10},
            curve=[{"test_recall@20": 0.08}, {"test_recall@20": 0.10}])
    b = rec("VBPR", grid_group="g", suffix="b", valid={"recall@20": 0.20}, test={"recall@20": 0.12},
            curve=[{"test_recall@20": 0.13}, {"test_recall@20": 0.12}])
    sel = report_stats.selection_frame([a, b], "missing", {"baby": 0.666}, metrics=("recall@20",))
    row = sel.iloc[0]
    assert (row["ours"], row["grid_by_test"], row["epoch_by_test"], row["grid_size"]) == (0.10, 0.12, 0.13, 2)
    assert row["grid_optimism_pct"] == pytest.approx(20.0) and row["epoch_optimism_pct"] == pytest.approx(30.0)


def test_imputation_tables_relative_to_mean_and_the_paper_layout_keeps_mean(tmp_path):
    recs = [rec("VBPR", "mean", test={"recall@20": 0.10, "ndcg@20": 0.05}),
            rec("VBPR", "ppr", test={"recall@20": 0.12, "ndcg@20": 0.04}),
            rec("VBPR", "zero", test={"recall@20": 0.08, "ndcg@20": 0.05}),
            rec("LightGCN", "mean", test={"recall@20": 0.09, "ndcg@20": 0.04})]
    recs[1]["extra"]["feature_quality"] = {"imputed_v_cosine": 0.9, "imputed_v_mse": 0.1, "imputed_v_rows": 5}
    values, rel, used, ratios = report_imputation.imputation_stats(recs)
    assert "LightGCN" not in set(values["model"])  # no features, no imputation
    got = {(r.imputation, r.metric): r.rel_pct for r in rel.itertuples()}
    assert got[("ppr", "recall@20")] == pytest.approx(20.0) and got[("zero", "recall@20")] == pytest.approx(-20.0)
    assert got[("ppr", "ndcg@20")] == pytest.approx(-20.0) and got[("mean", "recall@20")] == 0.0
    q = report_imputation.quality_frame(used)
    assert q[q["method"] == "ppr"]["cosine"].item() == 0.9
    prim, notes = primary_records(recs)
    assert {(r["model"], r["missing_axes"]["imputation"]) for r in prim} == {("VBPR", "mean"), ("LightGCN", "mean")}
    assert notes and "ppr" in notes[0]
    write_report(recs, tmp_path, ["missing", "imputation"])
    assert "0.1000" in (tmp_path / "missing.md").read_text() and "0.1200" not in (tmp_path / "missing.md").read_text()
    md = (tmp_path / "imputation.md").read_text()
    assert "+20.0" in md and "-20.0" in md and "PPR" in md
    assert (tmp_path / "imputation_baby.png").is_file()


def test_group_tables_and_exposure(tmp_path):
    r = rec("VBPR", mechanism="popularity")
    r["extra"] = {"test_group_complete": {"recall@20": 0.2, "ndcg@20": 0.1},
                  "test_group_missing": {"recall@20": 0.05, "ndcg@20": 0.02},
                  "exposure": {"missing": {"top20_share": 0.3, "catalogue_share": 0.6},
                               "complete": {"top20_share": 0.7, "catalogue_share": 0.4}}}
    r["extra_counts"] = {"test_group_complete": [30, 50], "test_group_missing": [20, 25]}
    stats, counts, exposure, _, _ = report_groups.group_stats([r], "missing")
    assert counts[("baby", "missing")] == (20, 25)
    ratio = exposure[(exposure["item_group"] == "missing") & (exposure["metric"] == "exposure_ratio")]["mean"].item()
    assert ratio == pytest.approx(0.5)
    write_report([r], tmp_path, ["missing"])
    md = (tmp_path / "exposure_missing.md").read_text()
    assert "50.0%" not in md and "30.0%" in md and "0.50" in md and "popularity" in md
    assert "missing ≥1 R@20" in (tmp_path / "groups_missing.md").read_text()
    assert (tmp_path / "groups_missing_baby.png").is_file()
    assert "groups_missing.md" in (tmp_path / "index.md").read_text()
