"""The CPU-against-device comparison (``benchmarks.experiments.device_compare``), exercised CPU against CPU:
identical sides agree exactly, a side whose reductions round differently stays within the
per-model tolerance, and a side that computes something else does not."""
import numpy as np
import pytest
import torch

from benchmarks.experiments.device_compare import (RandomOnHost, RoundingNoise, _topk_check, compare_devices,
                                       compare_knn_graphs)
from data_prep.synthetic import make_replica

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return {k: make_replica(k, scale=0.02, seed=7) for k in ("baby", "tiktok")}


@pytest.mark.parametrize("model,kind,protocol", [("MFBPR", "baby", "missing"), ("SGL", "tiktok", "missing"),
                                                 ("MILK", "tiktok", "new_items"), ("DGMRec", "baby", "new_items"),
                                                 ("LGMRec", "tiktok", "missing")])
def test_identical_sides_agree_exactly_and_rounding_noise_stays_within_tolerance(data, model, kind, protocol):
    same = compare_devices(model, data[kind], protocol, "cpu")
    assert same.ok, same.problems
    assert same.loss_rel == 0 and same.grad_rel == 0 and same.score_rel == 0
    assert same.top20_mismatched_users == 0 and same.users == data[kind].n_users
    assert same.recall20_cpu == same.recall20_device
    noisy = compare_devices(model, data[kind], protocol, "cpu", device_mode=RoundingNoise(scale=2.0 ** -23))
    assert noisy.ok, noisy.problems
    assert noisy.grad_rel > 0 and noisy.score_rel > 0  # the noise did reach the device side
    assert noisy.grad_ratio < 1


def test_a_different_computation_is_caught(data):
    def scaled(m):  # weights off by 1e-4: far above rounding, far below an obvious bug
        with torch.no_grad():
            m.user_embedding.mul_(1.0 + 1e-4)
    c = compare_devices("LightGCN", data["baby"], "missing", "cpu", alter=scaled)
    assert not c.ok and any("gradient" in p or "loss" in p for p in c.problems)

    def shuffled(m):  # the device scores other items: top-20 lists differ
        with torch.no_grad():
            m.item_embedding.copy_(m.item_embedding.flip(0))
    c = compare_devices("MFBPR", data["tiktok"], "missing", "cpu", alter=shuffled)
    assert c.top20_mismatched_users > c.users // 2
    assert any("top-20" in p for p in c.problems)


def test_top20_differences_at_ties_are_accepted_and_others_are_not():
    ref = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0]])
    tie = torch.tensor([[5.0, 4.0, 2.99999, 3.0, 1.0]])  # item 3 replaces item 2 at the boundary
    assert _topk_check(ref, tie, 1e-5, k=3) == (0, 2)
    wrong = torch.tensor([[5.0, 4.0, 0.0, 0.0, 3.5]])     # item 4 enters, 1 below the boundary
    assert _topk_check(ref, wrong, 1e-5, k=3) == (1, 0)
    assert _topk_check(ref, ref, 1e-5, k=3) == (0, 0)


def test_random_on_host_is_transparent_on_the_cpu():
    def draws():
        torch.manual_seed(3)
        x = torch.ones(4, 5, requires_grad=True)
        return (torch.rand(3), torch.randn(2, 2), torch.rand_like(x), torch.randperm(6),
                torch.nn.functional.dropout(x, 0.5), torch.empty(3).uniform_(),
                torch.nn.functional.gumbel_softmax(x, tau=0.5))
    plain = draws()
    with RandomOnHost():
        aligned = draws()
    assert all(torch.equal(a, b) for a, b in zip(plain, aligned))


def test_knn_graphs_cpu_against_cpu(data):
    rows = compare_knn_graphs(data["tiktok"], "cpu")
    assert len(rows) == 3 * 3 and all(r["ok"] and r["rows_differing_beyond_ties"] == 0 for r in rows)
