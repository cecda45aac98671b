"""Further official seeds: parsing the official log, merging records, pooling them in fidelity."""
import json
import shutil

import pytest

from benchmarks.experiments.fidelity import official_runs
from benchmarks.experiments.official_runs import main as official_main
from benchmarks.experiments.official_runs import merge, parse_log


def _metrics(r20, n20):
    return (f"recall@5: 0.0100    recall@10: 0.0200    recall@20: {r20:.4f}    recall@50: 0.0900    "
            f"ndcg@5: 0.0050    ndcg@10: 0.0080    ndcg@20: {n20:.4f}    ndcg@50: 0.0200    ")


# Three epochs in the official trainer's log layout; validation improves at epochs 0 and 1 only.
LOG = "\n".join([
    "Sun 22 Nov 2026 16:13:21 INFO ██Server: \tvm",
    "Sun 22 Nov 2026 16:13:25 INFO epoch 0 training [time: 2.00s, train loss: 182.6147]",
    "Sun 22 Nov 2026 16:13:26 INFO epoch 0 evaluating [time: 0.80s, valid_score: 0.002400]",
    "Sun 22 Nov 2026 16:13:26 INFO valid result: ", _metrics(0.0024, 0.0009),
    "Sun 22 Nov 2026 16:13:26 INFO test result: ", _metrics(0.0026, 0.0014),
    "Sun 22 Nov 2026 16:13:26 INFO ██ BM3--Best validation results updated!!!",
    "Sun 22 Nov 2026 16:13:28 INFO epoch 1 training [time: 1.00s, train loss: 142.5713]",
    "Sun 22 Nov 2026 16:13:29 INFO valid result: ", _metrics(0.0600, 0.0200),
    "Sun 22 Nov 2026 16:13:29 INFO test result: ", _metrics(0.0640, 0.0243),
    "Sun 22 Nov 2026 16:13:29 INFO ██ BM3--Best validation results updated!!!",
    "Sun 22 Nov 2026 16:13:31 INFO epoch 2 training [time: 3.00s, train loss: 100.7609]",
    "Sun 22 Nov 2026 16:13:32 INFO valid result: ", _metrics(0.0500, 0.0190),
    "Sun 22 Nov 2026 16:13:32 INFO test result: ", _metrics(0.0700, 0.0300),
    "Sun 22 Nov 2026 16:14:10 INFO best valid result: " + _metrics(0.0600, 0.0200),
    "Sun 22 Nov 2026 16:14:10 INFO test result: " + _metrics(0.0640, 0.0243),
    "Sun 22 Nov 2026 16:14:10 INFO ████Current BEST████:",
])


def test_parse_log_reads_curve_best_epoch_and_final_metrics():
    rec = parse_log(LOG)
    assert rec["best_epoch"] == 1                        # the last "updated" mark, not the best test epoch
    assert rec["test"]["recall@20"] == 0.064 and rec["test"]["ndcg@20"] == 0.0243
    assert rec["valid"]["recall@20"] == 0.06
    assert rec["train_seconds_per_epoch"] == 2.0          # (2 + 1 + 3) / 3
    assert [c["train_loss"] for c in rec["curve"]] == [182.6147, 142.5713, 100.7609]
    assert [c["test_ndcg@20"] for c in rec["curve"]] == [0.0014, 0.0243, 0.03]
    assert rec["curve"][2]["valid_recall@20"] == 0.05
    assert rec["train_seconds_per_epoch_median"] == 2.0   # median of 2, 1, 3
    assert rec["valid_eval_seconds"] == 0.8               # the one "evaluating [time: ...]" line


def test_parse_log_refuses_an_unfinished_run():
    unfinished = LOG.split("best valid result")[0]
    with pytest.raises(ValueError, match="no finished run"):
        parse_log(unfinished)


def test_merge_replaces_the_same_code_base_dataset_model_and_seed(tmp_path):
    path = tmp_path / "extra.json"
    path.write_text(json.dumps([{"model": "BM3", "dataset": "tiktok", "seed": 42, "test": {"recall@20": 0.1}},
                                {"model": "BM3", "dataset": "tiktok", "seed": 7, "test": {"recall@20": 0.2}},
                                {"model": "BM3", "dataset": "baby", "seed": 42, "codebase": "mmrec",
                                 "test": {"recall@20": 0.4}}]))
    merged = merge(path, [{"model": "BM3", "dataset": "tiktok", "seed": 42, "test": {"recall@20": 0.3}}])
    # records written before the code base was recorded are the DGMRec release's
    assert [(r["dataset"], r["seed"], r["test"]["recall@20"]) for r in merged] == \
        [("baby", 42, 0.4), ("tiktok", 7, 0.2), ("tiktok", 42, 0.3)]
    # the same model and seed on another dataset, or of the other code base, is another record
    merged = merge(path, [{"model": "BM3", "dataset": "baby", "seed": 42, "codebase": "dgmrec-release",
                           "test": {"recall@20": 0.5}}])
    assert sorted(r["test"]["recall@20"] for r in merged if r["dataset"] == "baby") == [0.4, 0.5]
    assert merge(tmp_path / "absent.json", [{"model": "A", "seed": 1}]) == [{"model": "A", "seed": 1}]


def test_fidelity_pools_extra_seeds_without_double_counting(tmp_path):
    def rec(seed, r, status="ok"):
        return {"model": "BM3", "seed": seed, "protocol": "missing", "status": status,
                "test": {"recall@20": r, "ndcg@20": r / 2}}
    main = tmp_path / "official.json"
    extra = tmp_path / "extra.json"
    main.write_text(json.dumps([rec(999, 0.064)]))
    # seed 999 again (must not count twice), two new seeds, one failed run (ignored)
    extra.write_text(json.dumps([rec(999, 0.5), rec(42, 0.05), rec(2023, 0.066), rec(7, 0.0, "failed")]))
    runs = official_runs(main, (extra,))
    assert sorted((r["seed"], r["test"]["recall@20"]) for r in runs["BM3"]) == [(42, 0.05), (999, 0.064), (2023, 0.066)]
    assert official_runs(main, (tmp_path / "absent.json",))["BM3"][0]["seed"] == 999


def test_cli_refuses_what_is_not_a_checkout_or_a_dataset_folder(tmp_path):
    data = tmp_path / "baby"
    data.mkdir()
    (data / "baby.inter").write_text("userID\titemID\tx_label\n")
    with pytest.raises(SystemExit, match="not a checkout of ptkjw1997/DGMRec or enoche/MMRec"):
        official_main(["--source", str(tmp_path), "--models", "BM3", "--data-dir", str(data)])
    with pytest.raises(SystemExit, match="no nowhere.inter"):
        (tmp_path / "nowhere").mkdir()
        official_main(["--source", str(tmp_path), "--models", "BM3", "--data-dir", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="--seeds must be comma-separated integers, got '42,x'"):
        official_main(["--source", str(tmp_path), "--models", "BM3", "--data-dir", str(data), "--seeds", "42,x"])


def test_run_one_drives_a_checkout_on_linked_data(tmp_path):
    # A stand-in official src: its main.py needs the linked data file and the raw-image imports
    # (torchvision, lmdb) the real one makes, then writes its log where the real one does.
    from benchmarks.experiments.official_runs import run_one
    src, data = tmp_path / "src", tmp_path / "tiktok"
    src.mkdir()
    data.mkdir()
    (data / "tiktok.inter").write_text("userID\titemID\tx_label\n")
    (src / "main.py").write_text(
        "import os, sys, json\n"
        "import torchvision.transforms, lmdb\n"
        "assert os.path.isfile('../data/tiktok/tiktok.inter')\n"
        "args = sys.argv\n"
        "assert args[args.index('--seed') + 1] == '[42]'\n"
        "assert args[args.index('-g') + 1] == ''\n"  # a CPU run hides every GPU from the official configurator
        "assert json.loads(args[args.index('--config_override') + 1]) == {'epochs': 3}\n"
        "os.makedirs('log/BM3', exist_ok=True)\n"
        f"open('log/BM3/run.log', 'w').write({LOG!r})\n")
    rec = run_one(src, data, "BM3", 42, {"epochs": 3}, timeout=60, device="cpu")
    assert rec["status"] == "ok", rec.get("error")
    assert (rec["seed"], rec["best_epoch"], rec["test"]["ndcg@20"]) == (42, 1, 0.0243)
    assert rec["peak_rss_mb"] > 0 and "peak_gpu_mb" not in rec   # read by the launcher at the process's exit
    assert not (src / "log").exists()                    # the checkout itself is left untouched
    (src / "main.py").write_text("raise SystemExit('boom')\n")
    failed = run_one(src, data, "BM3", 42, {"epochs": 3}, timeout=60)
    assert failed["status"] == "failed" and "boom" in failed["error"]


def test_workspace_sends_cuda_calls_to_the_available_device(tmp_path):
    from benchmarks.experiments.official_checkout import workspace
    src, data = tmp_path / "src", tmp_path / "tiktok"
    (src / "models").mkdir(parents=True)
    data.mkdir()
    (src / "models" / "m.py").write_text("import torch\nx = torch.zeros(2).cuda()\n")
    root = workspace(src, data, "tiktok")
    copied = (root / "src" / "models" / "m.py").read_text()
    shutil.rmtree(root)
    assert ".cuda()" not in copied and 'torch.cuda.is_available() else "cpu"' in copied
    exec(compile(copied, "m.py", "exec"), {})            # runs on a CPU-only machine
    assert (src / "models" / "m.py").read_text().endswith(".cuda()\n")  # the checkout is untouched


def test_gpu_id_never_hides_the_gpu_it_should_use(monkeypatch):
    """The official --gpu_id becomes CUDA_VISIBLE_DEVICES; its default '1' hides a one-GPU machine's GPU."""
    import torch

    from benchmarks.experiments.official_runs import gpu_arg
    assert gpu_arg("cpu") == "" and gpu_arg("cuda:3") == "3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_arg("cuda") == "0" and gpu_arg(None) == "0" and gpu_arg("auto") == "0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_arg(None) == ""


def test_official_override_pins_every_grid_key_to_our_setting(tmp_path):
    from benchmarks.experiments.official_runs import official_override
    (tmp_path / "configs" / "best").mkdir(parents=True)
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "LightGCN.yaml").write_text(
        "n_ui_layers: [3, 4]\nreg_weight: [1e-04, 1e-03]\nhyper_parameters: [n_ui_layers, reg_weight, missing_imputation]\n")
    (tmp_path / "configs" / "best" / "LightGCN_baby.json").write_text('{"n_ui_layers": [2]}')
    ours = {"n_ui_layers": 2, "embedding_size": 64}
    out = official_override(tmp_path, "LightGCN", "baby", ours, epochs=3)
    # ours where we have the key, else the first official value (a number, as the official loader reads it)
    assert out == {"n_ui_layers": [2], "reg_weight": [1e-4], "epochs": 3, "eval_step": 1, "stopping_step": 10 ** 6}
    assert official_override(tmp_path, "LightGCN", "tiktok", {"reg_weight": 0.0}, 2)["n_ui_layers"] == [3]
    # a setting that is not a grid key keeps its form (the official DGMRec reads n_mm_layers as a number)
    (tmp_path / "configs" / "model" / "DGMRec.yaml").write_text("hyper_parameters: ['seed', 'missing_imputation']\n")
    (tmp_path / "configs" / "best" / "DGMRec_tiktok.json").write_text('{"n_mm_layers": 2, "recon": 0.1}')
    out = official_override(tmp_path, "DGMRec", "tiktok", {"n_mm_layers": 3}, 1)
    assert out["n_mm_layers"] == 3 and out["recon"] == 0.1


def test_run_one_writes_mmrecs_pinned_model_yaml_and_runs_its_main(tmp_path):
    # MMRec's main takes only the model and the dataset: seed, epochs and device reach it through
    # the model YAML of the private copy, and a folder without a dataset YAML gets one
    from benchmarks.experiments.official_checkout import MMREC
    from benchmarks.experiments.official_runs import run_one
    src, data = tmp_path / "src", tmp_path / "baby"
    (src / "configs" / "model").mkdir(parents=True)
    (src / "configs" / "model" / "FREEDOM.yaml").write_text("reg_weight: [0.0, 0.1]\n")
    data.mkdir()
    (data / "baby.inter").write_text("userID\titemID\tx_label\n")
    (src / "main.py").write_text(
        "import os, sys, yaml\n"
        "import official_compat\n"
        "args = sys.argv\n"
        "assert args[1:] == ['-m', 'FREEDOM', '-d', 'baby'], args\n"
        "doc = yaml.safe_load(open('configs/model/FREEDOM.yaml'))\n"
        "assert doc == {'reg_weight': [0.1], 'epochs': 3, 'seed': [42], 'use_gpu': False}, doc\n"
        "assert yaml.safe_load(open('configs/dataset/baby.yaml'))['inter_file_name'] == 'baby.inter'\n"
        "assert os.path.isfile('../data/baby/user_graph_dict.npy')\n"
        "os.makedirs('log', exist_ok=True)\n"
        f"open('log/FREEDOM-baby.log', 'w').write({LOG!r})\n")
    graph = tmp_path / "graph.npy"
    graph.write_text("")
    rec = run_one(src, data, "FREEDOM", 42, {"reg_weight": [0.1], "epochs": 3}, timeout=60, dataset="baby",
                  device="cpu", codebase=MMREC, extra_data={"user_graph_dict.npy": graph})
    assert rec["status"] == "ok", rec.get("error")
    assert (rec["codebase"], rec["dataset"], rec["seed"], rec["test"]["recall@20"]) == (MMREC, "baby", 42, 0.064)
    assert (src / "configs" / "model" / "FREEDOM.yaml").read_text() == "reg_weight: [0.0, 0.1]\n"  # untouched


def test_cli_writes_records_per_dataset(tmp_path, monkeypatch):
    """Two datasets into one file: each record names its dataset, and a rerun replaces only its own."""
    import benchmarks.experiments.official_runs as runs
    from benchmarks.experiments.official_checkout import DGMREC
    root = tmp_path / "release"
    (root / "src" / "configs" / "best").mkdir(parents=True)
    (root / "src" / "main.py").write_text("")
    (root / "src" / "configs" / "model").mkdir()
    (root / "src" / "configs" / "model" / "MFBPR.yaml").write_text(
        "reg_weight: [1.0, 0.1]\nhyper_parameters: ['reg_weight', 'missing_imputation']\n")
    calls = []

    def fake_run_one(src, data_dir, model, seed, override, timeout=None, dataset="tiktok", device=None,
                     codebase=DGMREC, ratio=None, extra_data=None):
        calls.append((dataset, seed, override, ratio, device))
        return {"model": model, "dataset": dataset, "codebase": codebase, "seed": seed, "status": "ok",
                "epochs": override["epochs"], "test": {"recall@20": 0.1 * seed, "ndcg@20": 0.0},
                "wall_seconds": 0.0}
    monkeypatch.setattr(runs, "run_one", fake_run_one)
    out = tmp_path / "records.json"
    for name in ("baby", "sports"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.inter").write_text("userID\titemID\tx_label\n")
    base = ["--source", str(root), "--models", "MFBPR", "--epochs", "2", "--out", str(out), "--set", "reg_weight=0.1"]
    runs.main(base + ["--data-dir", str(tmp_path / "baby"), "--seeds", "1,2"])
    runs.main(base + ["--data-dir", str(tmp_path / "sports"), "--seeds", "1"])
    runs.main(base + ["--data-dir", str(tmp_path / "baby"), "--seeds", "2"])
    recs = json.loads(out.read_text())
    assert [(r["dataset"], r["seed"]) for r in recs] == [("baby", 1), ("baby", 2), ("sports", 1)]
    # the DGMRec release without a best file: {} with the grid pinned, the Amazon ratio, the CPU
    assert calls[0] == ("baby", 1, {"reg_weight": [0.1], "epochs": 2}, 0.666, "cpu")
    assert recs[0]["pinned"] == {"reg_weight": "--set"} and recs[0]["missing_ratio"] == 0.666
    assert recs[0]["modalities"] == [] and recs[0]["codebase"] == DGMREC
