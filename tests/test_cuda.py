"""The CUDA code path, on a machine with a CUDA device (skipped elsewhere, saying why).

For every registered model on 2- and 3-modality replicas under ``missing`` and ``new_items``:
one batch's loss and gradients on CUDA equal the CPU's for the same weights and batch within the
model's own float32 sensitivity, and full-ranking top-20 lists agree, ties aside
(``benchmarks.experiments.device_compare``); kNN graphs built on CUDA equal the CPU's, ties aside; the
poisoned-feature test holds on CUDA (``benchmarks.experiments.leakage``); the training loop makes no host
synchronisation per batch; a job runs end to end and records its GPU memory. The comparison
logic itself is tested on the CPU in ``test_device_compare.py``.
"""
import warnings

import numpy as np
import pytest
import torch

from benchmarks.experiments.device_compare import compare_devices, compare_knn_graphs
from benchmarks.experiments.leakage import check_leak
from data_prep.synthetic import make_replica
from models.registry import entries

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device visible: the CUDA path is checked on a GPU machine "
                                       "(python -m pytest tests/test_cuda.py or python -m benchmarks.experiments.gpu_check)")

MODELS = [e.name for e in entries() if not e.name.startswith("Test")]
_DATA = {}


def replica(kind):
    if kind not in _DATA:
        _DATA[kind] = make_replica(kind, scale=0.02, seed=7)
    return _DATA[kind]


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
@pytest.mark.parametrize("protocol", ["missing", "new_items"])
@pytest.mark.parametrize("model", MODELS)
def test_cuda_equals_cpu(model, kind, protocol):
    c = compare_devices(model, replica(kind), protocol, "cuda")
    assert c.ok, c.problems


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
@pytest.mark.parametrize("protocol", ["missing", "new_items"])
@pytest.mark.parametrize("model", MODELS)
def test_poisoned_features_are_invisible_on_cuda(model, kind, protocol):
    entry = next(e for e in entries() if e.name == model)
    r = check_leak(entry, replica(kind), protocol, "cuda")
    assert r["ok"], r


@pytest.mark.parametrize("kind", ["baby", "tiktok"])
def test_knn_graphs_built_on_cuda_equal_the_cpus(kind):
    bad = [r for r in compare_knn_graphs(replica(kind), "cuda") if not r["ok"]]
    assert not bad, bad


@pytest.mark.parametrize("model", ["MFBPR", "LightGCN", "VBPR"])
def test_training_loop_synchronises_per_epoch_not_per_batch(model):
    """CUDA's own sync detector: an epoch of 2 batches and one of 20 synchronise equally often."""
    from benchmarks.run.config import expand_grid, resolve
    from benchmarks.core.engine import Trainer, seed_everything
    from benchmarks.core.protocols import get_protocol
    from models.registry import get
    ds = replica("tiktok")
    counts = []
    for n_batches in (2, 20):
        entry = get(model)
        cfg = expand_grid(resolve(entry, "tiktok", {"epochs": 1, "eval_step": 1}, quick=True), entry.cls.list_params)[0]
        proto = get_protocol("missing")
        task = proto.build_task(ds, cfg, entry.cls, proto.ratios(ds, cfg)[0], torch.device("cuda"))
        cfg = dict(cfg, train_batch_size=-(-len(task.train_users) // n_batches))
        rng = seed_everything(1)
        m = entry.cls(cfg, task).to("cuda")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                Trainer(m, task, cfg, rng).run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message).lower() for w in seen))
    assert counts[0] == counts[1], counts


def test_a_cuda_job_runs_end_to_end_and_records_gpu_memory(tmp_path):
    from benchmarks.run.runner import RunOptions, execute, plan
    from benchmarks.run.store import ResultStore
    opts = RunOptions(protocols=["missing"], datasets=["synthetic:tiktok"], models=["LightGCN", "DGMRec"], seeds=[1],
                      data_root=str(tmp_path), quick=True, scale=0.03, results_dir=str(tmp_path / "r"),
                      cache_dir=None, sets={"device": "cuda", "epochs": 2}, progress=False)
    store = ResultStore(opts.results_dir)
    execute(plan(opts).jobs, store, n_workers=0, progress=False)
    recs = store.records()
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
    assert all(r["peak_gpu_memory_mb"] > 0 and r["environment"]["device"].startswith("cuda") for r in recs)
    assert all(np.isfinite(r["test"]["recall@20"]) for r in recs)
