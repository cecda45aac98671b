"""The reporting layer on a small hand-made results store (records + per-user npz via ResultStore)."""
import ast
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import benchmarks.report as report_pkg
from benchmarks.report import figures, presentation
from benchmarks.report.grid import Column, build_grid, latex_title, number
from benchmarks.report.levels import level_stats
from benchmarks.report.main_tables import main_table, paper_comparison
from benchmarks.report.published import PAPER_DIR, relative_difference
from benchmarks.report.per_user import UserMismatchError, paired_test
from benchmarks.report.ratios import ratio_stats
from benchmarks.report.retrieval import retrieval_paper_comparison, retrieval_stats
from benchmarks.report.selection import select_grid
from benchmarks.report.stats import significance_mark
from benchmarks.report.writer import write_report
from benchmarks.run.store import ResultStore
from models.registry import GROUPS, entries

SEEDS = (999, 42, 2023)
GROUP = {"LightGCN": "collaborative", "VBPR": "multi-modal", "MGCN": "multi-modal",
         "CI2MG": "missing-modality-aware", "DGMRec": "proposed"}
# dataset -> (kind, source, official ratio, per-model skill in R@20)
DATASETS = {
    "tiktok": ("tiktok", "real", 0.6,
               {"LightGCN": 0.05, "VBPR": 0.08, "MGCN": 0.12, "CI2MG": 0.07, "DGMRec": 0.20}),
    "baby": ("baby", "reference", 0.666,
             {"LightGCN": 0.04, "VBPR": 0.06, "MGCN": 0.100, "CI2MG": 0.09, "DGMRec": 0.101}),
    "synthetic:sports": ("sports", "synthetic", 0.666,
                         {"LightGCN": 0.03, "VBPR": 0.05, "MGCN": 0.06, "CI2MG": 0.07, "DGMRec": 0.08}),
}
METRIC_SCALE = {"recall@20": 1.0, "recall@50": 1.6, "ndcg@20": 0.5, "ndcg@50": 0.6}
N_USERS = 60
LEVEL_COUNTS = {0: (40, 1087), 1: (30, 607), 2: (33, 753), 3: (29, 599)}


def _record(model, ds, ratio, seed, test, valid=None, protocol="missing", **kw):
    kind, source, _, _ = DATASETS[ds]
    jid = f"{protocol}-{model}-{ds}-{ratio}-{seed}".replace(":", "_") + kw.pop("suffix", "")
    rec = dict(job_id=jid, grid_group=f"{protocol}-{model}-{ds}-{ratio}-{seed}", model=model, group=GROUP[model],
               dataset=ds, dataset_kind=kind, data_source=source, protocol=protocol, missing_ratio=ratio, seed=seed,
               status="ok", valid=valid or dict(test), test=test, extra={}, extra_counts={},
               train_seconds_per_epoch=1.0 + len(model) / 10, best_epoch=9, epochs_run=15, eval_seconds=0.2,
               peak_memory_mb=300.0, config={"fix_reference_defects": False, "valid_metric": "recall@20"},
               code_version="test", dataset_ref={"scale": 0.05 if source == "synthetic" else 1.0})
    rec.update(kw)
    return rec


def build_store(root):
    """Every model on every dataset at its official ratio (3 seeds), TikTok also at ratios 0 and 0.2,
    per-level metrics and DGMRec retrieval on TikTok, new items on TikTok, one grid trap, one failure."""
    store = ResultStore(root)
    rng = np.random.default_rng(7)
    users_all = np.arange(1000, 1000 + N_USERS)
    for ds, (kind, source, official, skill) in DATASETS.items():
        ratios = [0.0, 0.2, official] if ds == "tiktok" else [official]
        for model, base in skill.items():
            for ratio in ratios:
                for si, seed in enumerate(SEEDS):
                    level = base * (1 - 0.5 * ratio * (0.2 if model == "DGMRec" else 1.0)) + 0.004 * si
                    vecs = {m: np.clip(level * f + rng.normal(0, 0.05, N_USERS), 0, 1)
                            for m, f in METRIC_SCALE.items()}
                    perm = rng.permutation(N_USERS)  # stored in a different user order per job
                    test = {m: float(v.mean()) for m, v in vecs.items()}
                    rec = _record(model, ds, ratio, seed, test)
                    if ds == "tiktok" and ratio == official:
                        rec["extra"] = {f"test_level{lv}": {"recall@20": test["recall@20"] * (1 - 0.1 * lv)
                                                            + 0.001 * si, "ndcg@20": test["ndcg@20"] * (1 - 0.1 * lv)}
                                        for lv in range(4)}
                        rec["extra_counts"] = {f"test_level{lv}": list(c) for lv, c in LEVEL_COUNTS.items()}
                        if model == "DGMRec":
                            rec["extra"]["retrieval"] = {
                                "missing1_dgmrec_hit@10": 0.30 + 0.01 * si, "missing1_dgmrec_hit@20": 0.40 + 0.01 * si,
                                "missing1_nn_hit@10": 0.10, "missing1_nn_hit@20": 0.15,
                                "missing2_dgmrec_hit@10": 0.25, "missing2_dgmrec_hit@20": 0.35 + 0.02 * si,
                                "missing1_dgmrec_hit@10_v2t": 0.5, "n_queries_missing1_v": 11}
                    store.append(rec)
                    store.save_per_user(rec["job_id"], users_all[perm], {m: v[perm] for m, v in vecs.items()})
                    if ds == "tiktok" and ratio == official:
                        new = _record(model, ds, ratio, seed, {m: v * 0.5 for m, v in test.items()},
                                      protocol="new_items")
                        store.append(new)
                        store.save_per_user(new["job_id"], users_all[perm], {m: v[perm] * 0.5 for m, v in vecs.items()})
    # a grid trap: a second MGCN setting with a huge test score but a lower validation score
    trap = _record("MGCN", "tiktok", 0.6, 999, {m: 0.9 for m in METRIC_SCALE}, valid={"recall@20": 0.0},
                   suffix="-trap")
    store.append(trap)
    store.save_per_user(trap["job_id"], users_all, {m: np.full(N_USERS, 0.9) for m in METRIC_SCALE})
    store.append(dict(_record("VBPR", "tiktok", 0.6, 5, {}), status="failed", error="boom", job_id="failed-1",
                      grid_group="failed-1"))
    return store


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The hand-made store, built once; tests that change it work on a copy."""
    root = tmp_path_factory.mktemp("template")
    build_store(root)
    return root


def _copy(template, dest):
    shutil.copytree(template, dest, dirs_exist_ok=True)
    return ResultStore(dest)


@pytest.fixture(scope="module")
def run(template, tmp_path_factory):
    root = tmp_path_factory.mktemp("res")
    store = _copy(template, root)
    records = store.records()
    files = write_report(records, root, ["missing", "new_items", "missing_level", "missing_ratio", "retrieval"],
                         store)
    return root, store, records, files


def _selected(records, model, ds, ratio, protocol="missing"):
    return [r for r in select_grid(records) if r["model"] == model and r["dataset"] == ds
            and r["protocol"] == protocol and abs(r["missing_ratio"] - ratio) < 1e-9]


def _seed_values(records, model, ds, ratio, metric, protocol="missing"):
    return np.array([r["test"][metric] for r in _selected(records, model, ds, ratio, protocol)])


def md_table(text):
    """The first markdown table of a file: (headers, rows as lists of cells)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def _plain(cell):
    return re.sub(r"\*\*|</?u>", "", cell)


def md_cell(text, model, header):
    headers, rows = md_table(text)
    row = next(r for r in rows if r[headers.index("Model")] == model)
    return row[headers.index(header)]


def test_means_stds_and_official_ratio(run):
    root, store, records, _ = run
    t = main_table(records, "missing", store)
    assert t.ratios == {"tiktok": 0.6, "baby": 0.666, "synthetic:sports": 0.666}
    for ds, (_, _, ratio, skill) in DATASETS.items():
        for model in skill:
            for metric in METRIC_SCALE:
                vals = _seed_values(records, model, ds, ratio, metric)
                assert len(vals) == 3
                mean, std, n = t.cell(model, ds, metric)
                assert n == 3
                assert mean == pytest.approx(vals.mean(), abs=1e-12)
                assert std == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    # the grid trap (test 0.9, lower validation) never reaches the table
    assert t.cell("MGCN", "tiktok", "recall@20")[0] < 0.5
    std_md = (root / "missing_std.md").read_text()
    m, s, _ = t.cell("VBPR", "tiktok", "ndcg@50")
    assert md_cell(std_md, "VBPR", "tiktok N@50") == f"{m:.4f}±{s:.4f}"


def test_bold_and_underline(run):
    root, store, records, _ = run
    md = (root / "missing.md").read_text()
    tex = (root / "missing.tex").read_text()
    for ds, (_, _, ratio, skill) in DATASETS.items():
        means = {m: _seed_values(records, m, ds, ratio, "recall@20").mean() for m in skill}
        order = sorted(means, key=means.get, reverse=True)
        first, second = order[0], order[1]
        assert md_cell(md, first, f"{ds} R@20") == f"**{means[first]:.4f}**"
        assert md_cell(md, second, f"{ds} R@20") == f"<u>{means[second]:.4f}</u>"
        for other in order[2:]:
            assert md_cell(md, other, f"{ds} R@20") == f"{means[other]:.4f}"
        assert re.search(rf"^{first} &.*\\textbf{{{means[first]:.4f}}}", tex, re.M)
        assert re.search(rf"^{second} &.*\\underline{{{means[second]:.4f}}}", tex, re.M)
    # groups in the paper's order, labelled
    headers, rows = md_table(md)
    assert [r[1] for r in rows] == ["LightGCN", "VBPR", "MGCN", "CI2MG", "DGMRec", "Improv."]
    assert [r[0] for r in rows][:5] == ["collaborative", "multi-modal", "", "missing-modality-aware", "proposed"]
    assert "\\multicolumn{13}{l}{\\textit{multi-modal}}" in tex and "\\toprule" in tex and "\\bottomrule" in tex


def test_improvement_and_significance_against_scipy(run):
    root, store, records, _ = run
    t = main_table(records, "missing", store)
    md = (root / "missing.md").read_text()
    marks = set()
    for ds, (_, _, ratio, skill) in DATASETS.items():
        for metric in METRIC_SCALE:
            base = {m: _seed_values(records, m, ds, ratio, metric).mean() for m in skill if m != "DGMRec"}
            best = max(base, key=base.get)
            dgm = _seed_values(records, "DGMRec", ds, ratio, metric).mean()
            pct = 100 * (dgm - base[best]) / base[best]
            row = t.improv[(t.improv["dataset"] == ds) & (t.improv["metric"] == metric)].iloc[0]
            assert row["best_baseline"] == best
            assert row["improv_pct"] == pytest.approx(pct)

            def seed_avg(model):
                vs = []
                for r in _selected(records, model, ds, ratio):
                    d = store.load_per_user(r["job_id"])
                    order = np.argsort(d["users"])
                    vs.append(d[metric][order])
                return np.mean(vs, axis=0)

            p = sps.ttest_rel(seed_avg("DGMRec"), seed_avg(best)).pvalue
            assert row["p"] == pytest.approx(p)
            mark = "**" if p < 0.01 else "*" if p < 0.05 else "n.s."
            assert row["mark"] == mark
            marks.add(mark)
            short = {"recall@20": "R@20", "recall@50": "R@50", "ndcg@20": "N@20", "ndcg@50": "N@50"}[metric]
            expected = f"{pct:+.2f}%" + (" n.s." if mark == "n.s." else mark.replace("*", "\\*"))
            assert md_cell(md, "Improv.", f"{ds} {short}") == expected
    assert {"**", "n.s."} <= marks  # both branches exercised (tiktok clear win, baby a tie)
    assert significance_mark(0.009) == "**" and significance_mark(0.04) == "*" and significance_mark(0.2) == "n.s."
    assert (root / "missing_improv.csv").read_text().startswith("protocol,dataset,metric")


def test_users_must_match(tmp_path):
    store = ResultStore(tmp_path)
    a = _record("DGMRec", "tiktok", 0.6, 1, {"recall@20": 0.1})
    b = _record("MGCN", "tiktok", 0.6, 1, {"recall@20": 0.1})
    store.save_per_user(a["job_id"], np.array([3, 1, 2]), {"recall@20": np.array([0.3, 0.1, 0.2])})
    store.save_per_user(b["job_id"], np.array([1, 2, 4]), {"recall@20": np.array([0.1, 0.1, 0.1])})
    with pytest.raises(UserMismatchError):
        paired_test(store, [a], [b], "recall@20")
    store.save_per_user(b["job_id"], np.array([2, 3, 1]), {"recall@20": np.array([0.1, 0.2, 0.05])})
    res = paired_test(store, [a], [b], "recall@20")  # aligned by user id: a=[.1,.2,.3], b=[.05,.1,.2]
    assert res["p"] == pytest.approx(sps.ttest_rel([0.1, 0.2, 0.3], [0.05, 0.1, 0.2]).pvalue)


def test_mismatched_users_or_missing_vectors_are_reported_not_tested(template, tmp_path):
    store = _copy(template, tmp_path)
    records = store.records()
    dgm = _selected(records, "DGMRec", "tiktok", 0.6)[0]
    d = store.load_per_user(dgm["job_id"])
    store.save_per_user(dgm["job_id"], d["users"][1:], {k: v[1:] for k, v in d.items() if k != "users"})
    (tmp_path / "per_user" / f"{_selected(records, 'DGMRec', 'baby', 0.666)[0]['job_id']}.npz").unlink()
    write_report(records, tmp_path, ["missing"], store, figures=False)
    md = (tmp_path / "missing.md").read_text()
    assert md_cell(md, "Improv.", "tiktok R@20").endswith(" n/a")
    assert not md_cell(md, "Improv.", "baby R@20").endswith(("*", "n.s."))
    assert "cover different users" in md and "per-user vectors are unavailable" in md
    assert md_cell(md, "Improv.", "synthetic:sports R@20")[-1] in "*." # still tested


def test_no_dgmrec_no_improvement_row(template, tmp_path):
    store = ResultStore(template)
    records = [r for r in store.records() if r["model"] != "DGMRec"]
    write_report(records, tmp_path, ["missing"], store, figures=False)
    md = (tmp_path / "missing.md").read_text()
    assert "Improv." not in md.split("\n\n", 1)[1] and "No Improv. row: no model of group proposed was run." in md
    assert not (tmp_path / "missing_improv.csv").exists()


def test_missing_level_table(run):
    root, store, records, _ = run
    stats, counts, ratios, _ = level_stats(records)
    assert counts["tiktok"] == LEVEL_COUNTS and ratios == {"tiktok": 0.6}
    md = (root / "missing_level.md").read_text()
    for lv, label in enumerate(("full", "missing 1", "missing 2", "missing 3")):
        vals = [r["extra"][f"test_level{lv}"]["recall@20"] for r in _selected(records, "VBPR", "tiktok", 0.6)]
        row = stats[(stats["model"] == "VBPR") & (stats["level"] == lv) & (stats["metric"] == "recall@20")].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(vals)) and row["std"] == pytest.approx(np.std(vals, ddof=1))
        assert md_cell(md, "VBPR", f"{label} R@20") == f"{np.mean(vals):.4f}"
        assert f"{label} {LEVEL_COUNTS[lv][1]} interactions" in md
    best = md_cell(md, "DGMRec", "full R@20")
    assert best.startswith("**")


def test_ratio_relative_drop(run):
    root, store, records, _ = run
    values, drops, _ = ratio_stats(records)
    md = (root / "missing_ratio.md").read_text().split("**Missing-ratio analysis, tiktok.**")[1]
    for model in ("DGMRec", "LightGCN"):
        for r in (0.2, 0.6):
            for metric in ("recall@20", "ndcg@20"):
                m0 = {x["seed"]: x["test"][metric] for x in _selected(records, model, "tiktok", 0.0)}
                mr = {x["seed"]: x["test"][metric] for x in _selected(records, model, "tiktok", r)}
                expected = np.mean([100 * (m0[s] - mr[s]) / m0[s] for s in SEEDS])
                got = drops[(drops["model"] == model) & (drops["ratio"] == r) & (drops["metric"] == metric)]
                assert got["drop"].iloc[0] == pytest.approx(expected)
        m0 = np.mean([x["test"]["recall@20"] for x in _selected(records, model, "tiktok", 0.0)])
        assert _plain(md_cell(md, model, "R@20 r=0")) == f"{m0:.4f}"
    drop_part = md.split("**Relative drop vs ratio 0, tiktok.**")[1]
    exp = drops[(drops["model"] == "LightGCN") & (drops["ratio"] == 0.6) & (drops["metric"] == "recall@20")]["drop"]
    assert md_cell(drop_part, "LightGCN", "drop of R@20 (%) r=0.6") == f"{exp.iloc[0]:.2f}"
    vals = _seed_values(records, "MGCN", "tiktok", 0.2, "ndcg@20")
    assert _plain(md_cell(md, "MGCN", "N@20 r=0.2")) == f"{vals.mean():.4f}"


def test_paper_comparison(run):
    root, store, records, _ = run
    assert (PAPER_DIR / "table1_missing.csv").is_file() and (PAPER_DIR / "table2_new_items.csv").is_file()
    t = main_table(records, "missing", store)
    cmp = paper_comparison(t)
    assert set(cmp["dataset"]) == {"tiktok"}  # only real data is compared
    assert set(cmp["model"]) == {"VBPR", "MGCN", "CI2MG", "DGMRec"}  # LightGCN is not in the published table
    ours = _seed_values(records, "VBPR", "tiktok", 0.6, "recall@20").mean()
    row = cmp[(cmp["model"] == "VBPR") & (cmp["metric"] == "recall@20")].iloc[0]
    assert row["paper"] == 0.0410
    assert row["rel_diff_pct"] == pytest.approx(100 * (ours - 0.0410) / 0.0410)
    assert relative_difference(0.11, 0.10) == pytest.approx(10.0)
    md = (root / "missing_vs_paper.md").read_text()
    headers, rows = md_table(md)
    vb = next(r for r in rows if r[0] == "VBPR")
    assert vb[headers.index("R@20 paper")] == "0.0410"
    assert vb[headers.index("R@20 Δ%")] == f"{row['rel_diff_pct']:+.1f}%"
    assert (root / "new_items_vs_paper.md").exists()
    index = (root / "index.md").read_text()
    assert "No paper comparison for baby, synthetic:sports" in index
    assert "reference data (surrogate features)" in index and "SYNTHETIC replica" in index


def test_retrieval_table(run):
    root, store, records, _ = run
    md = (root / "retrieval.md").read_text()
    headers, rows = md_table(md)
    assert headers == ["metric", "missing1_nn", "missing1_dgmrec", "missing2_dgmrec"]
    assert [r[0] for r in rows] == ["hit@10", "hit@20", "hit@10 (v2t)"]
    assert rows[1][headers.index("missing2_dgmrec")] == f"{np.mean([0.35, 0.37, 0.39]):.4f}"
    assert "tiktok is tiktok on real data" in (root / "index.md").read_text()  # paper has Baby only
    # the same runs relabelled as real Baby are compared with the published Baby numbers
    relabelled = [dict(r, dataset="baby-real", dataset_kind="baby", missing_ratio=0.666)
                  for r in records if r["dataset"] == "tiktok" and r["missing_ratio"] == 0.6]
    stats, _, recs = retrieval_stats(relabelled)
    cmp = retrieval_paper_comparison(stats, recs)
    row = cmp[(cmp["column"] == "missing1_dgmrec") & (cmp["metric"] == "hit@10")].iloc[0]
    assert row["paper"] == 0.3577 and row["rel_diff_pct"] == pytest.approx(100 * (0.31 - 0.3577) / 0.3577)


def test_captions_name_the_data(run):
    root, *_ = run
    md = (root / "missing.md").read_text()
    caption = md.split("\n\n")[0]
    assert "tiktok: real data" in caption and "baby: reference data (surrogate features)" in caption
    assert "synthetic:sports: SYNTHETIC replica at scale 0.05" in caption and "SYNTHETIC REPLICA DATA" in caption
    assert "Seeds: 42, 999, 2023" in caption and "Reference defects reproduced" in caption
    for name in ("missing_level.md", "missing_ratio.md", "retrieval.md", "cost.md", "new_items.md"):
        text = (root / name).read_text()
        assert "real data" in text and "Seeds:" in text and "defects" in text, name
    assert "\\caption{" in (root / "missing_level.tex").read_text()


def test_files_figures_and_index(run):
    root, _, _, files = run
    names = {f.name for f in files}
    for stem in ("missing", "new_items", "missing_level", "missing_ratio", "retrieval", "cost"):
        assert {f"{stem}.md", f"{stem}.tex", f"{stem}.csv"} <= names
    figs = ["missing_level_tiktok", "missing_ratio_tiktok", "cost_missing", "cost_new_items"]
    for stem in figs:
        for ext in ("png", "pdf"):
            p = root / f"{stem}.{ext}"
            assert p in files and p.stat().st_size > 5000
        assert (root / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (root / "index.md").read_text()
    for f in files:
        if f.name != "index.md":
            assert f"({f.name})" in index, f.name
    assert "Failed jobs" in index and "VBPR on tiktok" in index


def test_presentation_covers_the_registry_and_gives_each_model_its_own_colour():
    registered = {e.name: e.group for e in entries() if e.cls.__module__.startswith(("models.", "baselines."))}
    assert set(registered) == set(presentation.PAPER_ORDER + presentation.POST_PAPER_ORDER)
    assert set(presentation.GROUP_MARKERS) == set(GROUPS)
    assert {presentation.PROPOSED_GROUP, presentation.FLOOR_GROUP} <= set(GROUPS)
    colours = [presentation.model_color(name, group) for name, group in registered.items()]
    assert len(set(colours)) == len(colours)  # no two registered models share a colour
    assert presentation.model_color("DGMRec", "proposed") == presentation.PROPOSED_COLOR == "#d62728"
    # the proposed colour goes with the group, not the name; an unknown name keeps one colour
    assert presentation.model_color("NewIdea", "proposed") == presentation.PROPOSED_COLOR
    assert presentation.model_color("NewIdea", "multi-modal") == presentation.model_color("NewIdea", "multi-modal")
    assert presentation.model_color("NewIdea", "multi-modal") in presentation.FALLBACK_PALETTE
    assert presentation.group_marker("proposed") == "*"
    # rows: the registry's groups in order, the paper's order within a group, then by name
    pairs = [("Zeta", "multi-modal"), ("DGMRec", "proposed"), ("VBPR", "multi-modal"), ("ItemPop", "non-personalised"),
             ("Alpha", "multi-modal"), ("LightGCN", "collaborative"), ("MGCN", "multi-modal"), ("PGL", "multi-modal"),
             ("FREEDOM", "multi-modal")]
    # the models published after the paper follow its multi-modal baselines, in their own order
    assert [m for m, _ in presentation.model_order(pairs)] == ["ItemPop", "LightGCN", "VBPR", "MGCN", "FREEDOM", "PGL",
                                                              "Alpha", "Zeta", "DGMRec"]
    assert presentation.proposed_model(pairs) == "DGMRec"
    assert presentation.proposed_model(pairs[:1]) is None


def test_the_proposed_model_is_the_proposed_group_not_a_name(tmp_path):
    recs = [dict(r, model="NewIdea") if r["group"] == "proposed" else r for r in _floor_records()]
    write_report(recs, tmp_path, ["missing"], figures=False)
    md = (tmp_path / "missing.md").read_text()
    assert "Improv.: (NewIdea − strongest baseline)" in md
    headers, rows = md_table(md)
    assert rows[-1][headers.index("Model")] == "Improv."
    assert rows[-1][headers.index("synthetic:sports R@20")].startswith("-16.67%")  # (0.25 - 0.30) / 0.30


def test_build_grid_ranks_by_the_printed_value_per_column_or_per_span():
    values = {("a", "x"): 0.12344, ("b", "x"): 0.12341, ("c", "x"): 0.1, ("a", "y"): 0.5, ("b", "y"): None,
              ("c", "y"): 0.7}
    columns = [Column("x", "x", "s"), Column("y", "y", "s")]
    rows = [([m], m) for m in "abc"]
    grid = build_grid("T", "C", "tab:t", ["Model"], rows, columns, lambda m, c: number(values[(m, c)]), rank="column")
    assert grid.spans == [("s", 2)] and grid.headers == ["Model", "x", "y"]
    styles = [[c.style for c in row[1:]] for row in grid.rows]
    # x: a and b both print 0.1234, so they share the best mark and c is second; y: b is a dash, not ranked
    assert styles == [["best", "second"], ["best", ""], ["second", "best"]]
    assert [c.text for c in grid.rows[1]] == ["b", "0.1234", "–"]
    by_row = build_grid("T", "C", "", ["Model"], rows, columns, lambda m, c: number(values[(m, c)]), rank="span")
    assert [[c.style for c in row[1:]] for row in by_row.rows] == [["second", "best"], ["best", ""], ["second", "best"]]
    headers, md_rows = md_table(grid.markdown())
    assert headers == ["Model", "s x", "s y"] and md_rows[1] == ["b", "**0.1234**", "–"]
    assert "\\cmidrule(lr){2-3}" in grid.latex() and "\\multicolumn{2}{c}{s}" in grid.latex()


def test_report_modules_import_each_other_without_a_cycle():
    """Every import between modules of benchmarks/report (also those inside functions) goes one way."""
    root = Path(report_pkg.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "benchmarks.report":
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks.report."):
                deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("benchmarks.report.")}
        graph[path.stem] = deps - {path.stem}
    assert {"writer", "grid", "presentation", "selection", "figures"} <= set(graph)
    done, visiting = set(), []

    def visit(mod):
        assert mod not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(mod):] + [mod])
        if mod in done:
            return
        visiting.append(mod)
        for dep in sorted(graph.get(mod, ())):
            visit(dep)
        visiting.pop()
        done.add(mod)

    for mod in sorted(graph):
        visit(mod)
    assert "writer" not in set().union(*graph.values())  # the writer is on top


# ----------------------------------------------------------------------------- the floor, titles, captions
def _floor_records():
    recs = []
    for model, group, r20, reason in (("ItemPop", "non-personalised", 0.10, "not_trained"),
                                      ("LightGCN", "collaborative", 0.30, "early_stopping"),
                                      ("VBPR", "multi-modal", 0.08, "epoch_budget"),
                                      ("DGMRec", "proposed", 0.25, "early_stopping")):
        rec = _record("LightGCN", "synthetic:sports", 0.666, 999, {m: r20 * f for m, f in METRIC_SCALE.items()},
                      suffix=model)
        rec.update(model=model, group=group, grid_group=f"g-{model}", stop_reason=reason,
                   config={"fix_reference_defects": False, "valid_metric": "recall@20", "epochs": 500,
                           "eval_step": 1, "stopping_step": 10, "grid_limit": 1})
        recs.append(rec)
    return recs


def test_models_below_itempop_are_marked_and_itempop_is_no_baseline(tmp_path):
    write_report(_floor_records(), tmp_path, ["missing"], figures=False)
    md = (tmp_path / "missing.md").read_text()
    rows = {line.split("|")[2].strip(): line for line in md.splitlines() if line.startswith("|") and "---" not in line}
    assert "0.0800†" in rows["VBPR"] and "†" not in rows["LightGCN"] and "†" not in rows["ItemPop"]
    assert "† below ItemPop" in md
    # Improv. compares DGMRec with the strongest baseline (LightGCN), never with the floor
    assert "Strongest baselines: synthetic:sports LightGCN" in md
    assert "0.0800$^\\dagger$" in (tmp_path / "missing.tex").read_text()


def test_caption_states_the_schedule_and_how_runs_stopped(tmp_path):
    write_report(_floor_records(), tmp_path, ["missing"], figures=False)
    md = (tmp_path / "missing.md").read_text()
    assert ("Schedule: at most 500 epochs (early stopping on validation), evaluated every epoch, stopping after more "
            "than 10 evaluations without improvement; 2 of 3 trained runs stopped early, 1 reached the epoch budget; "
            "first setting of each grid only.") in md


def test_latex_caption_does_not_repeat_the_table_number(tmp_path):
    assert latex_title("Table 2 (missing modalities + new items), mean ± std over seeds") == \
        "Missing modalities + new items, mean ± std over seeds"
    assert latex_title("Cost") == "Cost"
    write_report(_floor_records(), tmp_path, ["missing"], figures=False)
    tex = (tmp_path / "missing.tex").read_text()
    assert "\\caption{\\textbf{Missing modalities.}" in tex and "Table 1" not in tex


def test_std_csv_is_written(tmp_path):
    files = write_report(_floor_records(), tmp_path, ["missing"], figures=False)
    assert tmp_path / "missing_std.csv" in files
    head = (tmp_path / "missing_std.csv").read_text().splitlines()[0]
    assert head == "model,group,dataset,metric,mean,std,n,seeds"


def test_figure_titles_name_the_data(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(figures, "cost_scatter", lambda part, title, stem, **k: titles.append(title) or [])
    write_report(_floor_records(), tmp_path, ["missing"])
    assert titles and all("SYNTHETIC replica" in t for t in titles)
