"""The shared training loop: one ``Trainer`` for every model.

BPR batches with one uniform negative per row; Adam at ``learning_rate`` on the model's
optimiser parameters; a per-epoch learning-rate factor ``g ** (epoch / s)`` from
``learning_rate_scheduler: [g, s]``; evaluation every ``eval_step`` epochs on validation
and test; early stopping on the validation metric rounded to 4 decimals (ties are no
improvement) after more than ``stopping_step`` evaluations without improvement; the
reported test metrics are those of the evaluation with the best validation metric. A
non-finite loss ends training, at the end of its epoch, with a failure that carries the
epoch and the best result so far. There is no wall-clock cap: a result never depends on how
busy the machine was. ``stop_reason`` says why training ended: ``early_stopping``,
``epoch_budget`` (``epochs`` ran out first) or ``not_trained`` (a model with nothing to learn,
evaluated once).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks.core.evaluation import Evaluator
from benchmarks.core.sampling import BPRSampler


class TrainingFailure(RuntimeError):
    def __init__(self, message: str, epoch: int, partial: "TrainResult | None" = None):
        super().__init__(message)
        self.epoch = epoch
        self.partial = partial


@dataclass
class TrainResult:
    best_epoch: int = -1
    valid: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    test_per_user: dict = field(default_factory=dict)
    test_users: np.ndarray | None = None
    extra: dict = field(default_factory=dict)  # name -> metrics at the best-valid evaluation
    extra_counts: dict = field(default_factory=dict)  # name -> (users, interactions)
    groups: object = None  # evaluation.GroupMetrics of the best-valid test pass (per-user vectors per group)
    captured: dict = field(default_factory=dict)  # what each analysis captured at the best validation
    curve: list = field(default_factory=list)
    epochs_run: int = 0
    train_seconds: list = field(default_factory=list)
    valid_eval_seconds: list = field(default_factory=list)
    test_eval_seconds: list = field(default_factory=list)
    stopped_early: bool = False
    stop_reason: str = ""  # early_stopping | epoch_budget | not_trained
    batches_per_epoch: int = 0
    batches_run: int = 0  # batches of the last epoch (fewer than batches_per_epoch when capped)

    @property
    def epoch_fraction(self) -> float:
        """Share of each epoch that ran (1 unless ``max_batches_per_epoch`` cut epochs short)."""
        return self.batches_run / self.batches_per_epoch if self.batches_per_epoch and self.batches_run else 1.0

    @property
    def train_seconds_per_epoch(self) -> float | None:
        """Mean seconds per epoch; for capped epochs, projected to a whole epoch."""
        return float(np.mean(self.train_seconds)) / self.epoch_fraction if self.train_seconds else None

    @property
    def train_seconds_per_epoch_median(self) -> float | None:
        """Median seconds per epoch (leaves out the first epoch's warm-up), projected like the mean."""
        return float(np.median(self.train_seconds)) / self.epoch_fraction if self.train_seconds else None

    @property
    def eval_seconds(self) -> float | None:
        return float(np.mean(self.test_eval_seconds)) if self.test_eval_seconds else None


def seed_everything(seed: int, deterministic: bool = False) -> np.random.Generator:
    """Seed python, numpy and torch; return the generator the sampler draws from."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # Multi-threaded CPU reductions vary in the last bits between runs: one thread is exact.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(1)
    return np.random.default_rng(seed)


def make_adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one (CPU and CUDA): the same update rule,
    several times faster on large parameter tables such as trainable raw features."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def lr_factor(scheduler) -> callable:
    gamma, step = (float(scheduler[0]), float(scheduler[1])) if scheduler else (1.0, 1.0)
    return lambda epoch: gamma ** (epoch / step)


@dataclass
class Evaluation:
    """One evaluation pass: validation on the trained model, test (and item groups) on the scorer."""

    valid: dict
    test: dict
    test_per_user: dict
    groups: object  # evaluation.GroupMetrics
    scorer: object  # the model the test passes scored (the trained one, or its test-time copy)


class Trainer:
    """Trains ``model`` on ``task`` and keeps what its best validation evaluation saw.

    ``analyses`` (name -> object with ``capture(model)`` and ``finalize(captured)``) capture what
    they need from the model at every best-validation evaluation and are scored once at the end
    (e.g. cross-modal retrieval). ``progress(point)``, when given, is called after every epoch with
    that epoch's curve point (epoch, train loss and, on evaluation epochs, the validation metric
    and the best so far). Every test pass also scores the item groups of ``task.item_groups``
    (``test_group_<name>`` and ``exposure`` in ``extra``). ``test_time``
    (``benchmarks.core.masked_copy.MaskedCopy``, the test_only mechanism): test passes score the
    trained weights on the masked task instead.
    """

    def __init__(self, model, task, config: dict, rng: np.random.Generator, progress=None,
                 analyses: dict | None = None, test_time=None):
        self.model, self.task, self.progress, self.test_time = model, task, progress, test_time
        self.analyses = analyses or {}
        self.epochs = int(config["epochs"])
        self.eval_step = int(config["eval_step"])
        self.stopping_step = int(config["stopping_step"])
        self.batch_size = int(config["train_batch_size"])
        self.valid_metric = str(config.get("valid_metric", "recall@20")).lower()
        self.evaluator = Evaluator(task, topk=config["topk"], metrics=config["metrics"],
                                   batch_size=int(config["eval_batch_size"]))
        if self.valid_metric not in {f"{m}@{k}" for m in self.evaluator.metrics for k in self.evaluator.topk}:
            raise ValueError(f"valid_metric {self.valid_metric!r} is not among the computed metrics "
                             f"{config['metrics']} @ {config['topk']}")
        self.trainable = getattr(model, "trainable", True)
        if self.trainable:
            self.optimizer = make_adam(model.optimizer_parameters(), lr=float(config["learning_rate"]),
                                       weight_decay=float(config.get("weight_decay", 0.0)))
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                               lr_factor(config.get("learning_rate_scheduler")))
        self.sampler = BPRSampler(task, rng, config.get("sampling_device"))
        max_batches = config.get("max_batches_per_epoch")
        self.max_batches = int(max_batches) if max_batches is not None else None
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches_per_epoch must be >= 1 or null, got {self.max_batches}")
        self.result = TrainResult()
        self.result.batches_per_epoch = self.sampler.n_batches(self.batch_size)
        self.captured: dict = {}
        self.best_score, self.bad_evals = -math.inf, 0
        self.epoch = 0
        if not self.trainable:
            self.epochs = 0
            self.result.stop_reason = "not_trained"

    def run(self) -> TrainResult:
        """Train to early stopping or the epoch budget; any error becomes a ``TrainingFailure``
        that carries the epoch and the best result so far."""
        try:
            self.train()
        except TrainingFailure:
            raise
        except (MemoryError, torch.OutOfMemoryError) as exc:
            raise TrainingFailure(f"out of memory at epoch {self.epoch}: {exc}".strip(), self.epoch,
                                  self.result) from exc
        except Exception as exc:  # the job records it; the epoch says how far training got
            raise TrainingFailure(f"{type(exc).__name__} at epoch {self.epoch}: {exc}", self.epoch,
                                  self.result) from exc
        if self.result.best_epoch < 0:
            self.evaluate_final_model()
        for name, analysis in self.analyses.items():
            if name in self.captured:
                self.result.extra[name] = analysis.finalize(self.captured[name])
        self.result.captured = self.captured
        return self.result

    def train(self) -> None:
        result = self.result
        for self.epoch in range(self.epochs):
            epoch = self.epoch
            t0 = time.perf_counter()
            total = self.train_epoch(epoch)
            self.scheduler.step()
            result.train_seconds.append(time.perf_counter() - t0)
            result.epochs_run = epoch + 1
            point = {"epoch": epoch, "train_loss": round(total, 4)}
            if (epoch + 1) % self.eval_step == 0:
                self.evaluate_epoch(epoch, point)
            result.curve.append(point)
            if self.progress is not None:
                best = self.best_score if self.best_score > -math.inf else None
                self.progress(dict(point, best=best, epochs=self.epochs))
            if self.should_stop():
                result.stopped_early = True
                result.stop_reason = "early_stopping"
                return
        if self.epochs > 0:
            result.stop_reason = "epoch_budget"

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training rows; the epoch's summed loss (a non-finite one fails the job)."""
        self.model.train()
        self.model.pre_epoch(epoch)
        # The epoch's loss is summed on the device (float64, as a Python float sum would) and
        # read once after the loop: reading or testing it per batch would make the host wait
        # for the accelerator every batch. A non-finite batch loss makes the sum non-finite.
        total = torch.zeros((), dtype=torch.float64, device=self.task.device)
        for batch, (users, pos, neg) in enumerate(self.sampler.epoch(self.batch_size, device=self.task.device)):
            if self.max_batches is not None and batch >= self.max_batches:
                break
            self.result.batches_run = batch + 1
            loss = self.model.calculate_loss(users, pos, neg)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        total = float(total)
        if not math.isfinite(total):
            raise TrainingFailure(f"non-finite training loss ({total}) at epoch {epoch}", epoch, self.result)
        return total

    def evaluate(self) -> Evaluation:
        """Validation on the trained model, then test and item groups on the test scorer."""
        self.model.pre_evaluation()
        valid, _, v_sec = self.evaluator.evaluate(self.model, self.task.valid)
        scorer = _test_scorer(self.model, self.test_time)
        test, per_user, t_sec, groups = self.evaluator.evaluate_groups(scorer, self.task.test, self.task.item_groups)
        self.result.valid_eval_seconds.append(v_sec)
        self.result.test_eval_seconds.append(t_sec)
        return Evaluation(valid, test, per_user, groups, scorer)

    def should_stop(self) -> bool:
        """Early stopping: more than ``stopping_step`` evaluations in a row without a better
        validation metric (at 4 decimals, so a tie is no improvement)."""
        return self.bad_evals > self.stopping_step

    def evaluate_epoch(self, epoch: int, point: dict) -> None:
        """An evaluation epoch: its metrics go into the curve point; the early-stopping count and,
        on an improvement, the kept best state follow."""
        ev = self.evaluate()
        point.update({f"valid_{self.valid_metric}": round(ev.valid[self.valid_metric], 4),
                      "test_recall@20": round(ev.test.get("recall@20", float("nan")), 4),
                      "test_ndcg@20": round(ev.test.get("ndcg@20", float("nan")), 4)})
        score = round(ev.valid[self.valid_metric], 4)
        if score > self.best_score:
            self.best_score, self.bad_evals = score, 0
            self.keep_best(epoch, ev, extra_sets=True)
        else:
            self.bad_evals += 1

    def keep_best(self, epoch: int, ev: Evaluation, extra_sets: bool) -> None:
        """What is kept of the best validation evaluation: its metrics, per-user test vectors and
        item groups, the extra evaluation sets scored then (per-level test sets), and what each
        analysis captures from the model."""
        result = self.result
        result.best_epoch, result.valid, result.test = epoch, ev.valid, ev.test
        result.test_per_user, result.test_users = ev.test_per_user, self.task.test.users
        _keep_groups(result, ev.groups)
        if extra_sets:
            for name, eval_set in self.task.extra_eval.items():
                if len(eval_set):
                    result.extra[name], _, _ = self.evaluator.evaluate(ev.scorer, eval_set)
                    result.extra_counts[name] = (len(eval_set), eval_set.n_interactions)
        for name, analysis in self.analyses.items():
            self.captured[name] = analysis.capture(self.model)

    def evaluate_final_model(self) -> None:
        """No evaluation happened (not trained, or fewer epochs than ``eval_step``): the final model
        is evaluated once and kept, without the extra evaluation sets."""
        self.keep_best(self.result.epochs_run - 1, self.evaluate(), extra_sets=False)


def _test_scorer(model, test_time):
    """The model the test passes score: the trained one, or its test-time copy (test_only)."""
    if test_time is None:
        return model
    scorer = test_time.sync(model)
    scorer.pre_evaluation()
    return scorer


def _keep_groups(result: TrainResult, groups) -> None:
    result.groups = groups
    for name in [k for k in result.extra if k.startswith("test_group_")]:
        del result.extra[name], result.extra_counts[name]
    for g, means in groups.means.items():
        if groups.counts[g][0]:
            result.extra[f"test_group_{g}"] = means
            result.extra_counts[f"test_group_{g}"] = groups.counts[g]
    if groups.exposure:
        result.extra["exposure"] = groups.exposure
