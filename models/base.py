"""The recommender interface shared by DGMRec and every baseline.

A model holds only its own maths. The framework owns data loading, masking and imputation
(protocols), negative sampling, the optimiser and schedule, evaluation and reporting.

Contract:

* ``__init__(config, task)``: build parameters and graphs from the task (see
  ``models.task.Task``); ``config`` is the resolved flat configuration dict.
* ``calculate_loss(users, pos, neg)``: the scalar training loss of a batch of BPR triples.
* ``scoring_vectors()``: ``(user vectors, item vectors)`` whose dot products are the scores.
  A model that scores this way implements only this: the base class computes it once per
  evaluation pass (``begin_scoring``) and serves every user batch from it. A model that scores
  otherwise overrides ``full_sort_predict(users)`` (scores of every item for a batch of users,
  ``(B, n_items)``) and, if it caches, ``begin_scoring`` / ``end_scoring``.
* Hooks: ``pre_epoch(epoch)`` before each training epoch (feature generation, graph refresh,
  auxiliary optimisers); ``pre_evaluation()`` before each validation pass (new-item
  generation); ``begin_scoring()`` once before the batches of an evaluation pass, under
  ``torch.no_grad()``, so graph models propagate once instead of once per user batch.
* ``optimizer_parameters()``: what the main optimiser updates (models with an auxiliary
  optimiser, such as DGMRec's CLUB estimator, leave those parameters out).

Class attributes declare the data contract, which the protocol reads:

* ``group``: non-personalised | collaborative | multi-modal | missing-modality-aware | proposed;
* ``trainable``: False for a model with nothing to learn (ItemPop): the engine evaluates it
  once instead of training it;
* ``uses_features``: whether item features are loaded at all;
* ``handles_missing``: ``"impute"`` (the protocol imputes masked rows before the model sees
  them) or ``"native"`` (masked rows are zero and the model uses ``task.missing``);
* ``list_params``: config keys whose list values are one parameter, not a grid.
"""
from __future__ import annotations

import torch
from torch import nn


class Recommender(nn.Module):
    group: str = "multi-modal"
    uses_features: bool = True
    handles_missing: str = "impute"
    list_params: tuple[str, ...] = ()
    trainable: bool = True
    model_name: str = ""  # set by the registry

    def __init__(self, config: dict, task):
        super().__init__()
        self.config = config
        self.task = task
        self.n_users = task.n_users
        self.n_items = task.n_items
        self.device = task.device

    # ------------------------------------------------------------------ required
    def calculate_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scoring_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U×d user vectors, I×d item vectors) whose dot products are the scores."""
        raise NotImplementedError(f"{type(self).__name__} implements neither scoring_vectors nor full_sort_predict")

    def full_sort_predict(self, users: torch.Tensor) -> torch.Tensor:
        u, i = self._scoring if self._scoring is not None else self.scoring_vectors()
        return u.index_select(0, users) @ i.T

    # ------------------------------------------------------------------ hooks
    def pre_epoch(self, epoch: int) -> None:
        """Work done once before each training epoch."""

    def pre_evaluation(self) -> None:
        """Work done once before each validation pass (and the test pass that follows it)."""

    _scoring: tuple | None = None  # scoring_vectors() of the current evaluation pass

    def begin_scoring(self) -> None:
        """Called under no_grad before the user batches of one evaluation pass: graph models
        propagate once here instead of once per user batch."""
        if type(self).scoring_vectors is not Recommender.scoring_vectors:
            self._scoring = self.scoring_vectors()

    def end_scoring(self) -> None:
        """Called after the last user batch of an evaluation pass; drops the cache."""
        self._scoring = None

    def optimizer_parameters(self):
        return self.parameters()

    # ------------------------------------------------------------------ helpers
    def feature(self, modality: str) -> torch.Tensor:
        """The (masked, imputed) feature table of a modality, on the model's device."""
        return self.task.features[modality]
