"""Ranking metrics against values computed by hand."""
import math

import numpy as np
import pytest
import torch

from benchmarks.core.evaluation import Evaluator, rank_metrics
from models.task import EvalSet, Task


def log2(x):
    return math.log(x, 2)


def test_rank_metrics_by_hand():
    # user 0: relevant {A, B}; ranking hits at ranks 1 and 3 (K=3 list).
    # user 1: relevant 4 items (more than K=3); hits at ranks 2 and 3.
    # user 2: one relevant item, never ranked.
    hits = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    n_pos = torch.tensor([2, 4, 1])
    m = rank_metrics(hits, n_pos, [1, 2, 3], ("recall", "ndcg", "precision", "map"))
    r = {k: v.tolist() for k, v in m.items()}
    assert r["recall@1"] == pytest.approx([1 / 2, 0, 0])
    assert r["recall@3"] == pytest.approx([2 / 2, 2 / 4, 0])
    assert r["precision@2"] == pytest.approx([1 / 2, 1 / 2, 0])
    assert r["precision@3"] == pytest.approx([2 / 3, 2 / 3, 0])
    # NDCG@3, user 0: DCG = 1/log2(2) + 1/log2(4); IDCG = 1/log2(2) + 1/log2(3) (min(2,3)=2 ideal hits)
    assert r["ndcg@3"][0] == pytest.approx((1 + 1 / log2(4)) / (1 + 1 / log2(3)))
    # user 1 has 4 relevant > K=3: IDCG sums 3 ranks
    assert r["ndcg@3"][1] == pytest.approx((1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4)))
    assert r["ndcg@1"] == pytest.approx([1.0, 0.0, 0.0])
    # MAP@3: user 0: (P@1 + P@3) / min(2,3) = (1 + 2/3)/2 ; user 1: (P@2 + P@3)/min(4,3) = (1/2 + 2/3)/3
    assert r["map@3"] == pytest.approx([(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 3, 0])
    assert r["map@2"] == pytest.approx([1 / 2, (1 / 2) / 2, 0])


class FixedScores(torch.nn.Module):
    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.device = torch.device("cpu")

    def begin_scoring(self):
        pass

    def end_scoring(self):
        pass

    def full_sort_predict(self, users):
        return self.scores[users]


def _task(train_u, train_i, n_users, n_items, eval_set):
    return Task(dataset="t", n_users=n_users, n_items=n_items,
                train_users=np.array(train_u), train_items=np.array(train_i), features={}, modalities=(),
                missing={}, mask_groups={}, new_items=np.zeros(n_items, bool), valid=eval_set, test=eval_set)


def test_evaluator_masks_training_items_and_batches():
    # 3 users x 6 items. User 0's top-scored item 5 is a training item and must be skipped.
    scores = [[0.1, 0.9, 0.2, 0.8, 0.3, 5.0],
              [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
              [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]
    test = EvalSet.from_pairs("test", np.array([2, 0, 0, 1]), np.array([0, 1, 2, 0]))
    assert test.users.tolist() == [2, 0, 1]  # first-appearance order
    task = _task([0, 1, 2], [5, 1, 5], 3, 6, test)
    for batch in (1, 2, 4096):  # batching must not change anything
        ev = Evaluator(task, topk=[1, 2], metrics=("recall", "ndcg"), batch_size=batch)
        means, per_user, _ = ev.evaluate(FixedScores(scores), test)
        # user 2: ranking (5 masked) 4,3,... relevant {0} -> no hit
        # user 0: ranking 1,3,... relevant {1,2} -> recall@1 1/2, recall@2 1/2
        # user 1: ranking 0,(1 masked)2 -> relevant {0} -> hit at 1
        assert per_user["recall@1"].tolist() == pytest.approx([0, 0.5, 1.0])
        assert per_user["recall@2"].tolist() == pytest.approx([0, 0.5, 1.0])
        assert means["recall@1"] == pytest.approx(0.5)
        assert per_user["ndcg@2"][1] == pytest.approx(1 / (1 + 1 / log2(3)))


def test_evaluator_rejects_nan_scores():
    test = EvalSet.from_pairs("test", np.array([0]), np.array([1]))
    task = _task([0], [0], 1, 3, test)
    ev = Evaluator(task, topk=[1], metrics=("recall",))
    with pytest.raises(RuntimeError, match="NaN scores"):
        ev.evaluate(FixedScores([[0.0, float("nan"), 1.0]]), test)


def test_evalset_duplicates_and_restrict():
    s = EvalSet.from_pairs("x", np.array([3, 3, 1, 3]), np.array([2, 2, 4, 5]))
    assert s.users.tolist() == [3, 1]
    assert s.n_interactions == 3  # the duplicate (3, 2) counts once
    keep = np.zeros(6, bool)
    keep[[4]] = True
    r = s.restrict_items("y", keep)
    assert r.users.tolist() == [1] and r.items.tolist() == [4]
