"""The cost benchmark's side-by-side path: official runs kept and reused, ratios per pair."""
import json
from types import SimpleNamespace

from benchmarks.experiments.bench_cost import _official_record, _side_by_side_table


def test_official_runs_are_kept_and_not_repeated(tmp_path):
    store = tmp_path / "official_runs.jsonl"
    calls = []

    def run():
        calls.append(1)
        return {"status": "ok", "train_seconds_per_epoch_median": 2.0}
    key = {"model": "BM3", "dataset": "tiktok", "device": "cuda"}
    assert _official_record(store, key, run)["train_seconds_per_epoch_median"] == 2.0
    assert _official_record(store, dict(key), run)["key"] == key   # read back, not rerun
    _official_record(store, dict(key, device="cpu"), run)          # another device: another run
    assert len(calls) == 2 and len(store.read_text().splitlines()) == 2
    assert all(json.loads(line)["status"] == "ok" for line in store.read_text().splitlines())


def test_side_by_side_rows_pair_each_job_with_its_official_run():
    args = SimpleNamespace(epochs=3, seed=999)
    ours = [{"job_id": "a", "model": "LightGCN", "dataset": "tiktok", "status": "ok",
             "environment": {"device": "cuda:0"}, "train_seconds_per_epoch_median": 0.5, "valid_eval_seconds": 0.1,
             "peak_gpu_memory_mb": 300.0, "peak_memory_mb": 2000.0},
            {"job_id": "b", "model": "MFBPR", "dataset": "tiktok", "status": "ok", "environment": {}}]
    official = {"a": {"status": "ok", "train_seconds_per_epoch_median": 2.0, "valid_eval_seconds": 0.4,
                      "peak_gpu_mb": 600.0, "peak_rss_mb": 900.0}}
    text = _side_by_side_table(args, ours, official, ["MFBPR", "LightGCN"], [], on_gpu=True)
    row = [line for line in text.splitlines() if line.startswith("| LightGCN")][0].split("|")
    cells = [c.strip() for c in row]
    assert cells[4:8] == ["0.5", "2", "0.25", "0.1"]       # s/epoch, official, ratio, eval s
    assert "| MFBPR" not in text                           # no official run, no row
    assert "1 of 1 at most 0.5" in text
    assert "300" in text and "600" in text and "0.5 " in text  # GPU peaks and their ratio
