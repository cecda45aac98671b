"""The GPU code path without a GPU: no host read of tensor values per batch, sampling on the
model's device, index tensors moved once. ``HostReads`` counts the calls that make a host wait
for an accelerator; it works on the CPU, so these tests run everywhere."""
import numpy as np
import pytest
import torch

from benchmarks.config import expand_grid, resolve
from benchmarks.engine import seed_everything, train_and_evaluate
from benchmarks.evaluation import Evaluator
from benchmarks.host_sync import HostReads
from benchmarks.protocols import get_protocol
from benchmarks.sampling import BPRSampler
from data_prep.synthetic import make_replica
from models.graphs import EdgeDropper
from models.losses import batch_info_nce, distinct, info_nce_indexed
from models.registry import get

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def replica():
    return make_replica("tiktok", scale=0.03, seed=4)


def _task(ds, model="MFBPR", protocol="missing", **sets):
    entry = get(model)
    cfg = expand_grid(resolve(entry, ds.kind, sets, quick=True), entry.cls.list_params)[0]
    proto = get_protocol(protocol)
    return entry, cfg, proto.build_task(ds, cfg, entry.cls, proto.ratios(ds, cfg)[0])


def test_host_reads_counts_value_reads_and_nothing_else():
    x = torch.arange(6.0)
    with HostReads() as reads:
        y = (x * 2 + 1).sum(0)          # arithmetic: no read
        torch.topk(x, 2)
        x.index_select(0, torch.tensor([1, 2]))  # made from host data: one upload
        float(y)
        bool(y > 0)
        x[x > 2]                         # boolean mask: output sized by values
        torch.unique(x)
        x.cpu()
        torch.repeat_interleave(x, torch.ones(6, dtype=torch.long))
        torch.repeat_interleave(x, torch.ones(6, dtype=torch.long), output_size=6)  # size given: no read
    assert dict(reads.by_name) == {"tensor": 1, "__float__": 1, "__bool__": 1, "__getitem__": 1, "unique": 1,
                                   "cpu": 1, "repeat_interleave": 1}
    assert reads.total == 7


def test_distinct_ids_once_give_the_same_losses():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 8, generator=g), torch.randn(40, 8, generator=g)
    ia, ib = torch.randint(0, 30, (64,), generator=g), torch.randint(0, 40, (64,), generator=g)
    assert torch.equal(info_nce_indexed(a, ia, b, ib, 0.2), info_nce_indexed(a, distinct(ia), b, distinct(ib), 0.2))
    assert torch.equal(batch_info_nce(a, a.flip(0), ia, 0.3), batch_info_nce(a, a.flip(0), distinct(ia), 0.3))
    d = distinct(ia)
    assert distinct(d) is d
    assert torch.equal(d.uniq[d.inverse], ia) and int(d.counts.sum()) == len(ia)
