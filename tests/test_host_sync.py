"""The GPU code path without a GPU: no host read of tensor values per batch, sampling on the
model's device, index tensors moved once. ``HostReads`` counts the calls that make a host wait
for an accelerator; it works on the CPU, so these tests run everywhere."""
import numpy as np
import pytest
import torch

from benchmarks.run.config import expand_grid, resolve
from benchmarks.core.engine import Trainer, seed_everything
from benchmarks.core.evaluation import Evaluator
from benchmarks.experiments.host_sync import HostReads
from benchmarks.core.protocols import get_protocol
from benchmarks.core.sampling import BPRSampler
from data_prep.synthetic import make_replica
from models.graphs.user_item import EdgeDropper
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


@pytest.mark.parametrize("sampling_device", [None, "device"])
def test_training_loop_reads_nothing_per_batch(replica, sampling_device):
    """One epoch of MFBPR (whose batches read nothing themselves) with 2 and with 20 batches: the
    engine, sampler and evaluator make the same number of host reads, so none is per batch."""
    counts, losses = [], []
    for n_batches in (2, 20):
        entry, cfg, task = _task(replica, epochs=1, eval_step=1, sampling_device=sampling_device)
        size = -(-len(task.train_users) // n_batches)
        cfg = dict(cfg, train_batch_size=size, eval_batch_size=size)
        rng = seed_everything(3)
        model = entry.cls(cfg, task)
        with HostReads() as reads:
            result = Trainer(model, task, cfg, rng).run()
        assert result.batches_per_epoch == n_batches
        counts.append(reads.total)
        losses.append(result.curve[0]["train_loss"])
    assert counts[0] == counts[1], counts
    assert all(np.isfinite(losses)) and losses[1] > losses[0]  # a sum over batches: 20 batches sum more means


def test_epoch_loss_is_the_sum_of_batch_losses_as_before(replica):
    """The loss summed on the device equals the Python float sum of the batch losses."""
    entry, cfg, task = _task(replica, epochs=1, eval_step=1, train_batch_size=256)
    rng = seed_everything(5)
    model = entry.cls(cfg, task)
    seen = []
    original = model.calculate_loss

    def recording(u, p, n):
        loss = original(u, p, n)
        seen.append(float(loss.detach()))
        return loss
    model.calculate_loss = recording
    result = Trainer(model, task, cfg, rng).run()
    total = 0.0
    for x in seen:
        total += x
    assert result.curve[0]["train_loss"] == round(total, 4)


def test_evaluation_reads_nothing_per_batch(replica):
    entry, cfg, task = _task(replica)
    model = entry.cls(cfg, task)
    counts, means = [], []
    for batch in (7, 4096):
        ev = Evaluator(task, topk=[10, 20], metrics=("recall", "ndcg", "precision", "map"), batch_size=batch)
        with HostReads() as reads:
            m, per_user, _ = ev.evaluate(model, task.test)
        counts.append(reads.total)
        means.append(m)
        assert per_user["recall@20"].shape == (len(task.test),)
    assert counts[0] == counts[1]
    assert means[0] == means[1]


@pytest.mark.parametrize("where", ["host", "device"])
def test_sampler_law_on_host_and_device(replica, where):
    """Each epoch: every training row once; negatives uniform over the training items that are
    not new, never one of the user's training items; the frequencies match the exact law."""
    _, _, task = _task(replica, protocol="new_items")
    sampler = BPRSampler(task, np.random.default_rng(9), where)
    assert sampler.on_device("cpu") == (where == "device")
    train_keys = set((task.train_users * task.n_items + task.train_items).tolist())
    candidates = np.unique(task.train_items)
    candidates = candidates[~task.new_items[candidates]]
    counts = np.zeros(task.n_items)
    epochs = 30
    for _ in range(epochs):
        batches = list(sampler.epoch(1000, device="cpu"))
        u, p, n = (torch.cat(x).numpy() for x in zip(*batches))
        assert all(b[0].device.type == "cpu" and b[0].dtype == torch.int64 for b in batches)
        assert sorted((u * task.n_items + p).tolist()) == sorted((task.train_users * task.n_items
                                                                  + task.train_items).tolist())
        assert not any(k in train_keys for k in (u * task.n_items + n).tolist())
        assert not task.new_items[n].any() and np.isin(n, candidates).all()
        counts += np.bincount(n, minlength=task.n_items)
    # exact law: row (u, ·) draws uniformly among the candidates that are not u's positives
    pos_by_user = {}
    for uu, ii in zip(task.train_users.tolist(), task.train_items.tolist()):
        pos_by_user.setdefault(uu, set()).add(ii)
    cand_set = set(candidates.tolist())
    expected = np.zeros(task.n_items)
    for uu in task.train_users.tolist():
        allowed = cand_set - pos_by_user[uu]
        expected[list(allowed)] += epochs / len(allowed)
    z = (counts[candidates] - expected[candidates]) / np.sqrt(expected[candidates])
    assert np.abs(z).max() < 5.5  # Poisson-scale deviations only
    assert abs(float(np.mean(z))) < 0.1


def test_device_sampling_is_seeded_and_checks_its_option(replica):
    _, _, task = _task(replica)
    a = [torch.cat(x) for x in zip(*BPRSampler(task, np.random.default_rng(2), "device").epoch(512))]
    b = [torch.cat(x) for x in zip(*BPRSampler(task, np.random.default_rng(2), "device").epoch(512))]
    c = [torch.cat(x) for x in zip(*BPRSampler(task, np.random.default_rng(3), "device").epoch(512))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert BPRSampler(task, np.random.default_rng(2)).where == "auto"
    assert not BPRSampler(task, np.random.default_rng(2)).on_device("cpu")
    assert BPRSampler(task, np.random.default_rng(2)).on_device("cuda:0")  # auto: on an accelerator
    with pytest.raises(ValueError, match="sampling_device must be one of"):
        BPRSampler(task, np.random.default_rng(2), "gpu")


def test_edge_dropped_views_read_nothing_and_equal_the_mask_built_ones(replica):
    _, _, task = _task(replica, model="SGL")
    dropper = EdgeDropper(task)
    keep = int(dropper.n_edges * 0.8)
    gen = torch.Generator().manual_seed(1)
    dropper.sample(keep, generator=gen)  # warm-up (the item-major ranks are built once)
    with HostReads() as reads:
        view = dropper.sample(keep, generator=torch.Generator().manual_seed(7))
    assert reads.total == 0
    keys = torch.rand(dropper.n_edges, generator=torch.Generator().manual_seed(7)).neg_().add_(1.0).log_().neg_()
    chosen = torch.topk(keys / dropper.weights, keep, largest=False, sorted=False).indices
    mask = torch.zeros(dropper.n_edges, dtype=torch.bool)
    mask[chosen] = True
    ref = dropper.adjacency(mask)
    for a, b in ((view.crow_indices(), ref.crow_indices()), (view.col_indices(), ref.col_indices()),
                 (view.values(), ref.values())):
        assert torch.equal(a, b)
    # the kept edges' degrees: every user's row sums its kept edges' weights
    assert view.to_dense().count_nonzero() == 2 * keep


def test_distinct_ids_once_give_the_same_losses():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 8, generator=g), torch.randn(40, 8, generator=g)
    ia, ib = torch.randint(0, 30, (64,), generator=g), torch.randint(0, 40, (64,), generator=g)
    assert torch.equal(info_nce_indexed(a, ia, b, ib, 0.2), info_nce_indexed(a, distinct(ia), b, distinct(ib), 0.2))
    assert torch.equal(batch_info_nce(a, a.flip(0), ia, 0.3), batch_info_nce(a, a.flip(0), distinct(ia), 0.3))
    d = distinct(ia)
    assert distinct(d) is d
    assert torch.equal(d.uniq[d.inverse], ia) and int(d.counts.sum()) == len(ia)
