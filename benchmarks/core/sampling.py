"""BPR triples: every training row once per epoch, in shuffled order, with one negative each.

As the reference sampler: the negative of a row (u, i⁺) is drawn uniformly from the items
that occur in the training split (never from items without training rows, hence never a
new item) and redrawn while it is in u's training history. Rejection is vectorised over all
rows of the epoch at once.

Where the triples are drawn (``sampling_device``): ``host`` draws them with numpy from the
job's generator and copies each epoch to the model's device; ``device`` draws them with torch
on the model's device (a generator seeded once from the job's), so a GPU never waits for the
host between epochs; ``auto`` (null) is ``device`` on an accelerator and ``host`` on the CPU.
Both draw the same law; their streams differ, so a seed gives the same triples on every CPU
run and on every run on one kind of accelerator.
"""
from __future__ import annotations

import numpy as np
import torch

MAX_REDRAW_ROUNDS = 1000
SAMPLING_DEVICES = ("auto", "host", "device")


class BPRSampler:
    def __init__(self, task, rng: np.random.Generator, where: str | None = None):
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
        where = where or "auto"
        if where not in SAMPLING_DEVICES:
            raise ValueError(f"sampling_device must be one of {SAMPLING_DEVICES} (or null for auto), got {where!r}")
        self.where = where
        self._device_state = None  # (device, generator, users, items, candidates, keys) of the device path

    def on_device(self, device) -> bool:
        """Whether epochs for ``device`` are drawn there (else on the host)."""
        return self.where == "device" or (self.where == "auto" and torch.device(device).type != "cpu")

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
        """Yield (users, pos, neg) int64 tensors on ``device``; the last batch may be short."""
        if self.on_device(device):
            u_t, p_t, n_t = self._device_epoch(torch.device(device))
        else:
            order = self.rng.permutation(len(self.users))
            users, pos = self.users[order], self.items[order]
            neg = self.negatives(users)
            u_t, p_t, n_t = (torch.from_numpy(a).to(device) for a in (users, pos, neg))
        for lo in range(0, len(u_t), batch_size):
            yield u_t[lo:lo + batch_size], p_t[lo:lo + batch_size], n_t[lo:lo + batch_size]

    # ------------------------------------------------------------------ device path
    def _state(self, device: torch.device):
        if self._device_state is None or self._device_state[0] != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(self.rng.integers(0, 2 ** 63 - 1)))
            tensors = (torch.from_numpy(a).to(device) for a in (self.users, self.items, self.candidates,
                                                                  self.train_keys))
            self._device_state = (device, gen, *tensors)
        return self._device_state

    def _device_epoch(self, device: torch.device):
        """The epoch's triples drawn on ``device``: a permutation, then rejection in rounds that
        redraw every still-positive negative at once (the host reads one flag per round)."""
        _, gen, users_all, items_all, cand, keys = self._state(device)
        n = len(users_all)
        order = torch.randperm(n, generator=gen, device=device)
        users, pos = users_all[order], items_all[order]

        def draw():
            return cand[torch.randint(0, len(cand), (n,), generator=gen, device=device)]

        def positive(neg):
            k = users * self.n_items + neg
            at = torch.searchsorted(keys, k).clamp_(max=len(keys) - 1)
            return keys[at] == k

        neg = draw()
        bad = positive(neg)
        rounds = 0
        while bool(bad.any()):
            rounds += 1
            if rounds > MAX_REDRAW_ROUNDS:
                raise RuntimeError("negative sampling did not converge; a user has almost every item as positive")
            neg = torch.where(bad, draw(), neg)
            bad &= positive(neg)
        return users, pos, neg
