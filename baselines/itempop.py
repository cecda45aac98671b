"""ItemPop: every user gets the items with the most training interactions.

The non-personalised floor every table shows: a model that does not beat it has learned nothing
about individual users. No parameters, no training; ties go to the lower item id so the ranking is
deterministic. See docs/models/ItemPop.md.
"""
from __future__ import annotations

import torch

from models.base import Recommender
from models.registry import register


@register("ItemPop")
class ItemPop(Recommender):
    group = "non-personalised"
    uses_features = False
    trainable = False

    def __init__(self, config, task):
        super().__init__(config, task)
        counts = torch.from_numpy(task.item_degree())
        # Score = n_items - position in (count descending, id ascending): exact integers in
        # float32, so ties never reach topk.
        order = torch.argsort(-counts * task.n_items + torch.arange(task.n_items), stable=True)
        score = torch.empty(task.n_items, dtype=torch.float32)
        score[order] = torch.arange(task.n_items, 0, -1, dtype=torch.float32)
        self.register_buffer("popularity", score)

    def calculate_loss(self, users, pos, neg):
        raise RuntimeError("ItemPop is not trained")

    def full_sort_predict(self, users):
        return self.popularity.expand(len(users), -1)
