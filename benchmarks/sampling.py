"""BPR triples: every training row once per epoch, in shuffled order, with one negative each.

As the reference sampler: the negative of a row (u, i⁺) is drawn uniformly from the items
that occur in the training split (never from items without training rows, hence never a
new item) and redrawn while it is in u's training history. Rejection is vectorised over all
rows of the epoch at once.
"""
from __future__ import annotations

import numpy as np
import torch

MAX_REDRAW_ROUNDS = 1000


class BPRSampler:
    def __init__(self, task, rng: np.random.Generator):
        self.users = task.train_users.astype(np.int64)
        self.items = task.train_items.astype(np.int64)
        self.n_items = task.n_items
        self.rng = rng
        candidates = np.unique(self.items)
        self.candidates = candidates[~task.new_items[candidates]]
        self.train_keys = np.unique(self.users * self.n_items + self.items)
        if len(self.candidates) == 0:
            raise ValueError("no item occurs in the training split: nothing to sample negatives from")
        counts = np.bincount(self.users, minlength=1)
        if counts.max() >= len(self.candidates):
            user = int(np.argmax(counts))
            raise ValueError(f"user {user} has interacted with every training item: no negative exists for BPR")

    def _is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self.train_keys, keys)
        pos = np.minimum(pos, len(self.train_keys) - 1)
        return self.train_keys[pos] == keys

    def negatives(self, users: np.ndarray) -> np.ndarray:
        neg = self.candidates[self.rng.integers(0, len(self.candidates), size=len(users))]
        bad = np.flatnonzero(self._is_positive(users, neg))
        rounds = 0
        while len(bad):
            rounds += 1
            if rounds > MAX_REDRAW_ROUNDS:
                raise RuntimeError("negative sampling did not converge; a user has almost every item as positive")
            neg[bad] = self.candidates[self.rng.integers(0, len(self.candidates), size=len(bad))]
            bad = bad[self._is_positive(users[bad], neg[bad])]
        return neg

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self.users) // batch_size)

    def epoch(self, batch_size: int, device="cpu"):
        """Yield (users, pos, neg) int64 tensors; the last batch may be short."""
        order = self.rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        neg = self.negatives(users)
        u_t, p_t, n_t = (torch.from_numpy(a).to(device) for a in (users, pos, neg))
        for lo in range(0, len(users), batch_size):
            yield u_t[lo:lo + batch_size], p_t[lo:lo + batch_size], n_t[lo:lo + batch_size]
