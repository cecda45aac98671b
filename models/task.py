"""What a model is allowed to see: the output of a protocol.

A ``Task`` is built by a protocol (``benchmarks.core.protocols``) from a ``Dataset``. It holds the
training interactions, the *masked and imputed* features, the missing-modality sets, the
new items and the evaluation sets. Models receive a Task and nothing else, so the true
features of masked items and the held-out interactions of new items cannot reach them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from data_prep.modalities import Modalities
from models.cache import ArtifactCache


@dataclass
class EvalSet:
    """Held-out interactions of one split as CSR over the evaluated users.

    ``users`` are in first-appearance order of the split's rows (the official order);
    row r of the CSR (``indptr``/``items``) is the ground truth of ``users[r]``.
    """

    name: str
    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def from_pairs(cls, name: str, users: np.ndarray, items: np.ndarray) -> "EvalSet":
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        uniq, first = np.unique(users, return_index=True)
        order_users = uniq[np.argsort(first, kind="stable")]
        pos = np.empty(users.max() + 1 if len(users) else 0, dtype=np.int64)
        pos[order_users] = np.arange(len(order_users))
        rows = pos[users]
        # Duplicate (user, item) rows count once: ground truth is a set.
        key = np.unique(rows * (items.max() + 1 if len(items) else 1) + items)
        n_cols = items.max() + 1 if len(items) else 1
        rows, cols = key // n_cols, key % n_cols
        indptr = np.zeros(len(order_users) + 1, dtype=np.int64)
        np.add.at(indptr, rows + 1, 1)
        return cls(name, order_users, np.cumsum(indptr), cols.astype(np.int64))

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    def restrict_items(self, name: str, keep: np.ndarray) -> "EvalSet":
        """The same users' ground truth limited to items where ``keep[item]``; users left empty drop out."""
        rows = np.repeat(np.arange(len(self.users)), np.diff(self.indptr))
        sel = keep[self.items]
        return EvalSet.from_pairs(name, self.users[rows[sel]], self.items[sel])


@dataclass
class Task:
    """Everything a model may use for one (dataset, protocol, ratio) job."""

    dataset: str
    n_users: int
    n_items: int
    train_users: np.ndarray  # training rows, in file order
    train_items: np.ndarray
    features: dict[str, torch.Tensor]  # modality -> (n_items, D); masked rows already imputed
    modalities: Modalities  # the modalities the masks speak of (also for a task without feature tables)
    missing: dict[str, np.ndarray]  # modality -> bool (n_items,), True where the modality is masked
    mask_groups: dict[str, np.ndarray]  # raw groups ('t', 'v', 'all', ...) -> item ids
    new_items: np.ndarray  # bool (n_items,); all False outside the new-item protocol
    valid: EvalSet
    test: EvalSet
    imputation: str = "mean"
    extra_eval: dict[str, EvalSet] = field(default_factory=dict)  # evaluated at each best-valid epoch
    device: torch.device = torch.device("cpu")
    cache: ArtifactCache | None = None
    content_hash: dict[str, str] = field(default_factory=dict)  # what derived-artefact cache keys build on
    # item flags of the groups every test pass also reports ('complete', 'missing', 'new', 'warm',
    # 'popular', 'unpopular'; see protocols.item_groups)
    item_groups: dict[str, np.ndarray] = field(default_factory=dict)
    mechanism: str = "uniform"
    imputation_info: dict = field(default_factory=dict)  # modality -> {"filled": rows, "fallback": rows}
    # missing_mechanism test_only: the masked task the test passes score (this task is complete)
    test_task: "Task | None" = None

    def __post_init__(self):
        self.modalities = Modalities(self.modalities)

    @property
    def missing_modal(self) -> bool:
        """True when at least one item misses at least one modality."""
        return any(m.any() for m in self.missing.values())

    @property
    def new_item_mode(self) -> bool:
        return bool(self.new_items.any())

    def train_matrix(self) -> sp.csr_matrix:
        """Binary user x item matrix of the training interactions."""
        r = sp.csr_matrix((np.ones(len(self.train_users), dtype=np.float32),
                           (self.train_users, self.train_items)), shape=(self.n_users, self.n_items))
        r.sum_duplicates()
        r.data[:] = 1.0
        return r

    def item_degree(self) -> np.ndarray:
        return np.bincount(self.train_items, minlength=self.n_items)

    def user_degree(self) -> np.ndarray:
        return np.bincount(self.train_users, minlength=self.n_users)

    def cached(self, kind: str, params: dict, inputs: tuple[str, ...], build):
        """A derived artefact keyed by the content hashes named in ``inputs`` plus ``params``.

        ``inputs`` name entries of ``content_hash`` (e.g. ``("features:v", "missing", "train")``),
        so an artefact built from masked features can never be served to an unmasked run.
        """
        if self.cache is None:
            return build()
        missing = [k for k in inputs if k not in self.content_hash]
        if missing:
            raise KeyError(f"unknown cache input(s) {missing}; known: {sorted(self.content_hash)}")
        key_inputs = {k: self.content_hash[k] for k in inputs}
        return self.cache.get_or_build(kind, {"inputs": key_inputs, "params": params}, build)
