"""Official checkouts and the settings of an official run, on tiny stand-in checkouts made here:
which code base a checkout is, the dataset and modalities a folder gives, the DGMRec release's
best file, MMRec's grid pinning, the schedule, the user graph made by MMRec's script."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from benchmarks.experiments.official_checkout import (DGMREC, MMREC, CheckoutError, codebase_of, data_folder,
                                                      open_checkout, workspace)
from benchmarks.experiments.official_settings import (SettingError, effective, mmrec_model_yaml, our_settings,
                                                      ours_from_official, release_override, release_ratio)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def release(tmp_path):
    """A stand-in DGMRec release: best files, an overall schedule of its own."""
    src = tmp_path / "release" / "src"
    write(src / "main.py", "")
    write(src / "configs" / "overall.yaml", "epochs: 500\neval_step: 3\nstopping_step: 25\n"
          "learning_rate_scheduler: [1.0, 50]\ntrain_batch_size: 2048\nhyper_parameters: ['seed']\n")
    write(src / "configs" / "dataset" / "tiktok.yaml", "eval_step: 1\nstopping_step: 20\ntrain_batch_size: 4096\n")
    write(src / "configs" / "model" / "BM3.yaml", "n_layers: [1, 2]\nreg_weight: [0.1, 0.01]\ndropout: [0.3, 0.5]\n"
          "hyper_parameters: ['n_layers', 'reg_weight', 'dropout', 'missing_imputation']\n")
    write(src / "configs" / "best" / "BM3_baby.json", json.dumps({"n_layers": [2], "reg_weight": [0.01],
                                                                   "dropout": [0.3]}))
    return tmp_path / "release"


@pytest.fixture
def mmrec(tmp_path):
    """A stand-in MMRec: no best files, grids in the model YAML, a preprocessing folder."""
    root = tmp_path / "mmrec"
    write(root / "src" / "main.py", "")
    write(root / "preprocessing" / "dualgnn-gen-u-u-matrix.py", "")
    write(root / "src" / "configs" / "overall.yaml", "epochs: 1000\neval_step: 1\nstopping_step: 20\n"
          "learning_rate: 0.001\nlearning_rate_scheduler: [1.0, 50]\ntrain_batch_size: 2048\n"
          "hyper_parameters: ['seed']\n")
    write(root / "src" / "configs" / "model" / "FREEDOM.yaml",
          "embedding_size: 64\nknn_k: 10\nlambda_coeff: 0.9\nreg_weight: [0.0, 1e-05, 1e-04]\n"
          "dropout: [0.8, 0.9]\nmode: ['local']\nlearning_rate_scheduler: [0.96, 50]\n"
          "hyper_parameters: ['dropout', 'reg_weight', 'mode']\n")
    return root


def folder(tmp_path, name, files=("image_feat.npy", "text_feat.npy")):
    d = tmp_path / "data" / name
    write(d / f"{name}.inter", "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t0\t2\n")
    for f in files:
        write(d / f, "")
    return data_folder(d)


def test_the_code_base_is_told_by_its_files(release, mmrec, tmp_path):
    assert codebase_of(release) == DGMREC and codebase_of(mmrec) == MMREC
    with pytest.raises(CheckoutError, match="no src/main.py"):
        codebase_of(tmp_path)
    with open_checkout(release / "src") as c:  # the src folder of a work tree names the work tree
        assert (c.root, c.codebase) == (release, DGMREC)


def test_a_git_directory_is_exported_at_head(mmrec, tmp_path):
    git = ["git", "-C", str(mmrec), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with open_checkout(mmrec / ".git") as c:
        assert c.codebase == MMREC and c.commit == head and c.root != mmrec
        assert (c.root / "preprocessing" / "dualgnn-gen-u-u-matrix.py").is_file()
        exported = c.root
    assert not exported.exists()  # the temporary tree is gone afterwards


def test_dataset_name_and_modalities_come_from_the_folder(tmp_path):
    baby = folder(tmp_path, "baby")
    assert (baby.name, tuple(baby.modalities)) == ("baby", ("v", "t"))
    tiktok = folder(tmp_path, "tiktok", ("image_feat.npy", "text_feat.npy", "audio_feat.npy"))
    assert tuple(tiktok.modalities) == ("v", "t", "a") and tiktok.modalities.has_audio
    write(tmp_path / "odd" / "other.inter", "")
    with pytest.raises(ValueError, match="no odd.inter"):
        data_folder(tmp_path / "odd")


def test_release_reads_its_best_file_or_runs_with_an_empty_override(release):
    src = release / "src"
    override, pinned = release_override(src, "BM3", "baby", {"n_layers": 3}, {}, epochs=15)
    # the best file as it is (one value per grid, nothing to pin), and the epochs
    assert override == {"n_layers": [2], "reg_weight": [0.01], "dropout": [0.3], "epochs": 15} and pinned == {}
    assert release_ratio("baby") == 0.666 and release_ratio("tiktok") == 0.6
    # without a best file ({}), every grid with several values is pinned: ours, then the figure
    override, pinned = release_override(src, "BM3", "sports", {"n_layers": 1, "reg_weight": 0.1}, {"dropout": 0.5},
                                        epochs=2, figure={"reg_weight": 0.01})
    assert override == {"n_layers": [1], "reg_weight": [0.01], "dropout": [0.5], "epochs": 2}
    assert pinned == {"n_layers": "ours", "reg_weight": "official figure", "dropout": "--set"}
    with pytest.raises(SettingError, match="grid dropout=\\[0.3, 0.5\\] and no value of ours"):
        release_override(src, "BM3", "sports", {"n_layers": 1, "reg_weight": 0.1}, {}, epochs=2)


def test_mmrec_pins_every_grid_key_to_one_value(mmrec):
    src = mmrec / "src"
    doc, pinned = mmrec_model_yaml(src, "FREEDOM", "baby", {"reg_weight": 1e-4, "dropout": [0.8], "knn_k": 5},
                                   {"knn_k": 7}, epochs=15)
    assert doc["reg_weight"] == [1e-4] and doc["dropout"] == [0.8] and doc["mode"] == ["local"]
    assert pinned == {"dropout": "ours", "reg_weight": "ours", "mode": "official (one value)"}
    assert doc["knn_k"] == 7 and doc["epochs"] == 15 and doc["lambda_coeff"] == 0.9  # a plain --set; the rest as theirs
    assert doc["hyper_parameters"] == ["dropout", "reg_weight", "mode"]
    # --set wins over ours
    doc, pinned = mmrec_model_yaml(src, "FREEDOM", "baby", {"reg_weight": 1e-4}, {"dropout": 0.9}, epochs=15)
    assert doc["dropout"] == [0.9] and pinned["dropout"] == "--set"
    with pytest.raises(SettingError, match="official grid dropout=\\[0.8, 0.9\\] and no value of ours"):
        mmrec_model_yaml(src, "FREEDOM", "baby", {"reg_weight": 1e-4}, {}, epochs=15)
    with pytest.raises(SettingError, match="dropout is a grid in our configuration too"):
        mmrec_model_yaml(src, "FREEDOM", "baby", {"reg_weight": 0.0, "dropout": [0.1, 0.2]}, {}, epochs=15)
    with pytest.raises(SettingError, match="the official model has no setting knn_kk"):
        mmrec_model_yaml(src, "FREEDOM", "baby", {"reg_weight": 0.0, "dropout": 0.8}, {"knn_kk": 3}, epochs=15)
    with pytest.raises(SettingError, match="no configs/model/SMORE.yaml"):
        mmrec_model_yaml(src, "SMORE", "baby", {}, {}, epochs=15)


def test_the_schedule_is_the_official_one(mmrec, release):
    doc, _ = mmrec_model_yaml(mmrec / "src", "FREEDOM", "baby", {"reg_weight": 0.0, "dropout": 0.8}, {}, epochs=15)
    schedule, settings = effective(mmrec / "src", "FREEDOM", "baby", MMREC, doc)
    # MMRec's overall.yaml, the model YAML's own scheduler
    assert schedule == {"epochs": 15, "eval_step": 1, "stopping_step": 20, "learning_rate_scheduler": [0.96, 50],
                        "train_batch_size": 2048}
    assert settings["reg_weight"] == 0.0 and settings["dropout"] == 0.8 and settings["knn_k"] == 10
    override, _ = release_override(release / "src", "BM3", "tiktok", {"n_layers": 1, "reg_weight": 0.1,
                                                                      "dropout": 0.3}, {}, epochs=15)
    schedule, _ = effective(release / "src", "BM3", "tiktok", DGMREC, override)
    assert schedule["eval_step"] == 1 and schedule["stopping_step"] == 20 and schedule["train_batch_size"] == 4096
    schedule, _ = effective(release / "src", "BM3", "baby", DGMREC, {"epochs": 15})
    assert schedule["eval_step"] == 3 and schedule["stopping_step"] == 25


def test_our_settings_under_the_official_names():
    # MMRec's LightGCN calls its depth n_layers, ours n_ui_layers
    ours = our_settings(MMREC, "LightGCN", "baby")
    assert ours["n_layers"] == ours["n_ui_layers"]
    assert ours_from_official(MMREC, "LightGCN", {"n_layers": 2, "no_such_key": 1, "eval_step": 1}) == \
        {"n_ui_layers": 2, "eval_step": 1}
    assert our_settings(MMREC, "NoSuchModel", "baby") == {} and ours_from_official(MMREC, "NoSuchModel", {"a": 1}) == {}


def test_workspace_links_the_folder_and_restores_removed_library_calls(tmp_path, mmrec):
    baby = folder(tmp_path, "baby")
    graph = write(tmp_path / "graph.npy", "g")
    root = workspace(mmrec / "src", baby.path, "baby", {"user_graph_dict.npy": graph})
    try:
        assert (root / "data" / "baby" / "baby.inter").resolve() == (baby.path / "baby.inter").resolve()
        assert (root / "data" / "baby" / "user_graph_dict.npy").read_text() == "g"
        code = ("import official_compat, numpy as np, scipy.sparse as sp\n"
                "a = sp.dok_matrix((2, 3), dtype=np.float32)\n"
                "a._update({(0, 1): 1.0, (1, 2): 2.0})\n"
                "print(a.toarray().tolist(), np.float is float)\n")
        done = subprocess.run([sys.executable, "-c", code], cwd=root / "stubs", capture_output=True, text=True)
        assert done.stdout.strip() == "[[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]] True", done.stderr
    finally:
        import shutil
        shutil.rmtree(root)


def test_user_graph_is_made_by_the_checkout_script_once(tmp_path, mmrec):
    from benchmarks.experiments.official_checkout import Checkout
    from benchmarks.experiments.user_graph import needs_user_graph, user_graph_file
    # the stand-in script does what MMRec's does with the paths: from ../src, reads the dataset
    # YAML there and writes the graph into data_path/<dataset>
    write(mmrec / "preprocessing" / "dualgnn-gen-u-u-matrix.py",
          "import os, sys, yaml\n"
          "name = sys.argv[sys.argv.index('-d') + 1]\n"
          "os.chdir('../src')\n"
          "cfg = yaml.safe_load(open(f'configs/dataset/{name}.yaml'))\n"
          "rows = open(os.path.join('../data', name, cfg['inter_file_name'])).read().splitlines()\n"
          "open(os.path.join('../data', name, cfg['user_graph_dict_file']), 'w').write(str(len(rows)))\n")
    baby = folder(tmp_path, "baby")
    assert needs_user_graph(MMREC, "DRAGON", baby) and not needs_user_graph(MMREC, "FREEDOM", baby)
    assert not needs_user_graph(DGMREC, "DRAGON", baby)
    checkout = Checkout(mmrec, MMREC, None)
    made = user_graph_file(checkout, baby, tmp_path / "cache")
    assert made.read_text() == "5"  # header and four rows of the linked interaction file
    write(mmrec / "preprocessing" / "dualgnn-gen-u-u-matrix.py", "raise SystemExit('not run again')\n")
    assert user_graph_file(checkout, baby, tmp_path / "cache") == made  # the cached file
    with pytest.raises(RuntimeError, match="not run again"):
        user_graph_file(checkout, baby, tmp_path / "other-cache")
    assert yaml.safe_load((mmrec / "src" / "configs" / "overall.yaml").read_text())["eval_step"] == 1
    assert not (mmrec / "src" / "configs" / "dataset").exists()  # the checkout itself is untouched


def test_workspace_makes_dragons_result_embed_a_plain_tensor_on_the_cpu_too(tmp_path, mmrec):
    """MMRec's DRAGON registers result_embed as a parameter on the CPU (on CUDA ``.to`` copies it),
    and its forward then fails to replace it; in the private copy it is a plain tensor on both."""
    line = ("        self.result_embed = nn.Parameter(\n"
            "            nn.init.xavier_normal_(torch.tensor(np.random.randn(num_user + num_item, dim_x)))).to(self.device)\n")
    body = ("import numpy as np, torch\nfrom torch import nn\n\n\nclass M(nn.Module):\n"
            "    def __init__(self, num_user=2, num_item=3, dim_x=4):\n        super().__init__()\n"
            "        self.device = torch.device('cpu')\n" + line)
    write(mmrec / "src" / "models" / "dragon.py", body)
    baby = folder(tmp_path, "baby")
    root = workspace(mmrec / "src", baby.path, "baby")
    try:
        copied = (root / "src" / "models" / "dragon.py").read_text()
    finally:
        import shutil
        shutil.rmtree(root)
    original, patched = {}, {}
    exec(compile(body, "original.py", "exec"), original)
    exec(compile(copied, "dragon.py", "exec"), patched)
    np.random.seed(0)
    torch.manual_seed(0)
    before = original["M"]()
    with pytest.raises(TypeError, match="cannot assign"):  # what the original does on the CPU
        before.result_embed = torch.zeros(5, 4)
    np.random.seed(0)
    torch.manual_seed(0)
    after = patched["M"]()
    assert "result_embed" not in dict(after.named_parameters())
    assert torch.equal(after.result_embed, before.result_embed.detach())  # the same draws
    after.result_embed = torch.zeros(5, 4)
