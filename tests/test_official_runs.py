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


def test_merge_replaces_the_same_model_and_seed(tmp_path):
    path = tmp_path / "extra.json"
    path.write_text(json.dumps([{"model": "BM3", "seed": 42, "test": {"recall@20": 0.1}},
                                {"model": "BM3", "seed": 7, "test": {"recall@20": 0.2}}]))
    merged = merge(path, [{"model": "BM3", "seed": 42, "test": {"recall@20": 0.3}}])
    assert [(r["seed"], r["test"]["recall@20"]) for r in merged] == [(7, 0.2), (42, 0.3)]
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


def test_cli_refuses_a_folder_that_is_not_the_official_src(tmp_path):
    with pytest.raises(SystemExit, match="not the official src folder"):
        official_main(["--official-src", str(tmp_path), "--models", "BM3"])


def test_cli_names_bad_settings_file_seeds_and_model(tmp_path):
    src, data = tmp_path / "src", tmp_path / "tiktok"
    src.mkdir()
    data.mkdir()
    (src / "main.py").write_text("")
    official = tmp_path / "official.json"
    official.write_text(json.dumps([{"model": "BM3", "seed": 999, "config_override": {"epochs": 15}}]))
    base = ["--official-src", str(src), "--data-dir", str(data), "--out", str(tmp_path / "out.json")]
    with pytest.raises(SystemExit, match="absent.json: official results not found"):
        official_main(base + ["--models", "BM3", "--official", str(tmp_path / "absent.json")])
    with pytest.raises(SystemExit, match="--seeds must be comma-separated integers, got '42,x'"):
        official_main(base + ["--models", "BM3", "--official", str(official), "--seeds", "42,x"])
    with pytest.raises(SystemExit, match="no seed-999 settings in .* for: NoSuchModel"):
        official_main(base + ["--models", "BM3,NoSuchModel", "--official", str(official)])


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
    from benchmarks.experiments.official_runs import workspace
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


def test_pinned_override_fixes_each_grid_key_to_the_official_setting():
    from benchmarks.experiments.official_runs import pinned_override
    rec = {"config_override": {"epochs": 15, "reg_weight": [1.0, 0.01, 0.1], "learning_rate": [0.001]},
           "grid_selected": "['reg_weight', 'missing_imputation', 'seed']=(0.01, 1, 999)"}
    # seed and imputation are set per run, not pinned from the record
    assert pinned_override(rec) == {"epochs": 15, "reg_weight": [0.01], "learning_rate": [0.001]}
    assert pinned_override({"config_override": {"epochs": 15}}) == {"epochs": 15}


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
