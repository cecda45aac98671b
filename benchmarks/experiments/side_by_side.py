"""Same computation: an official model class beside ours, on identical weights and batches.

    python -m benchmarks.experiments.side_by_side --official-src /path/to/DGMRec/src --model SGL
    python -m benchmarks.experiments.side_by_side --official-src /path/to/DGMRec/src --model SGL --train --seeds 999,42,2023

Builds the official class with the official data pipeline from a checkout of
``ptkjw1997/DGMRec`` (a private copy prepared as ``official_runs`` does) on the reference TikTok
data, with the settings of its official figure, and:

* by default (**check**) copies the official initial weights into ours (``WEIGHTS`` maps the
  parameter names), sends one BPR batch of our sampler through both ``calculate_loss`` with the
  randomness aligned, and prints the two losses, the largest gradient difference of every
  parameter beside the official model's own change under a 1e-7 weight perturbation, and the
  largest difference between the two sides' masked, imputed feature tables;
* with ``--train`` trains and evaluates the official class with our engine (sampler,
  optimiser, schedule, evaluator) for each seed, to tell a model difference from a
  training-loop difference.

Models with a weight map: MFBPR, LightGCN, NGCF, SGL, SimGCL, BM3, MILK, SIBRAR, CI2MG;
``--train`` takes any official model name. How randomness is aligned and what the results
were: docs/fidelity.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks.experiments.bench_common import OFFICIAL_RESULTS, REFERENCE, parse_seeds
from benchmarks.core.engine import seed_everything
from benchmarks.experiments.fidelity import official_setting
from data_prep.errors import DataError
from models.base import Recommender

_NAMES = (("v", "image"), ("t", "text"), ("a", "audio"))  # our modality key, the official attribute prefix


def _per_modality(ours: str, theirs: str, params=("weight", "bias")) -> dict[str, str]:
    """Map entries for every modality, e.g. ``("proj.{m}.{p}", "{name}_trs.{p}")``; ``params``
    fills ``{p}`` (ignored when the pattern has none)."""
    return {ours.format(m=m, p=p): theirs.format(name=name, p=p) for m, name in _NAMES for p in params}


_EMBEDDINGS = {"user_embedding": "user_embedding.weight", "item_embedding": "item_embedding.weight"}
_ID_EMBEDDINGS = {"user_embedding": "user_embedding.weight", "item_embedding": "item_id_embedding.weight"}
_BM3 = dict(_ID_EMBEDDINGS, **{"predictor.weight": "predictor.weight", "predictor.bias": "predictor.bias"},
            **_per_modality("raw.{m}", "{name}_embedding.weight"), **_per_modality("trs.{m}.{p}", "{name}_trs.{p}"))
_NGCF = dict(_EMBEDDINGS, **{f"{ours}.{k}.{p}": f"{theirs}.{k}.{p}" for ours, theirs in (("gc", "gc_linears"),
                                                                                       ("bi", "bi_linears"))
                              for k in range(4) for p in ("weight", "bias")})
_MODALITY_INPUTS = dict(_per_modality("features.{m}", "{name}_embedding.weight"),
                        **_per_modality("proj.{m}.{p}", "{name}_trs.{p}"))
_MILK = {"user_embedding": "user_embedding.weight", **_MODALITY_INPUTS}
_SIBRAR = dict(_ID_EMBEDDINGS, **{k: k for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")},
               **_MODALITY_INPUTS)
_CI2MG = dict(_ID_EMBEDDINGS, **_per_modality("proj.{m}.{p}", "{name}_trs.{p}"),
              **_per_modality("prototypes.{m}", "{name}_prot.weight"),
              **_per_modality("hyper.{m}.weight", "hgcn_weight_{name}.weight"),
              **_per_modality("enhance.{m}.{p}", "{name}_enhance.{p}"),
              **{f"bn.{k}": f"bn.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
# our state_dict key -> the official class's state_dict key (buffers such as batch-norm
# statistics included)
WEIGHTS: dict[str, dict[str, str]] = {
    "MFBPR": _EMBEDDINGS, "LightGCN": _EMBEDDINGS, "NGCF": _NGCF, "SGL": _ID_EMBEDDINGS, "SimGCL": _ID_EMBEDDINGS,
    "BM3": _BM3, "MILK": _MILK, "SIBRAR": _SIBRAR, "CI2MG": _CI2MG,
}
# dropout rates set to 0 for the one-batch check, (ours, official) attribute names: the two
# sides draw their masks differently, so the draws cannot be aligned
NO_DROPOUT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "BM3": (("dropout",), ("dropout",)), "NGCF": (("dropout",), ("mess_dropout",)),
}
_FEATURES = {"v": "v_feat", "t": "t_feat", "a": "a_feat"}
# models whose official trainer runs model-specific steps that OfficialInEngine does not
OWN_TRAINING_STEPS = {
    "DGMRec": "the official trainer builds its CLUB estimators after the optimiser, keeps them in eval mode "
              "while training and runs new-item generation before validation",
}


def copy_weights(ours: torch.nn.Module, official: torch.nn.Module, mapping: dict[str, str]) -> list[str]:
    """Copy the official weights into ours through ``mapping``; every parameter of ours must be
    covered. Returns the keys copied. Map entries whose key ours lacks (a modality the dataset
    does not have) are skipped."""
    mine, theirs = ours.state_dict(), official.state_dict()
    params = {name for name, _ in ours.named_parameters()}
    uncovered = sorted(params - set(mapping))
    if uncovered:
        raise ValueError(f"no official counterpart mapped for our parameter(s): {', '.join(uncovered)}")
    copied = []
    with torch.no_grad():
        for key, off_key in mapping.items():
            if key not in mine:
                continue
            if off_key not in theirs:
                raise ValueError(f"the official model has no {off_key!r} (mapped from our {key!r})")
            if mine[key].shape != theirs[off_key].shape:
                raise ValueError(f"shape of our {key!r} {tuple(mine[key].shape)} differs from the official "
                                 f"{off_key!r} {tuple(theirs[off_key].shape)}")
            mine[key].copy_(theirs[off_key])
            copied.append(key)
    return copied


def _recording_multinomial(record: list):
    """torch.multinomial as usual, each result also appended to ``record`` (a context manager)."""
    original = torch.multinomial

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        record.append(out)
        return out
    return mock.patch.object(torch, "multinomial", recording)


def _replayed_edge_drops(ours, official, drawn: list):
    """Our SGL views built from the official draws: each draw indexes the official edge list
    (``edge_indices``), mapped to our edge order by (user, item)."""
    dropper = ours.dropper
    key_ours = dropper.users * dropper.n_items + dropper.items
    order = torch.argsort(key_ours)
    pending = list(drawn)

    def replay(keep, weighted=True, generator=None):
        idx = pending.pop(0)
        edges = official.edge_indices[:, idx].to(key_ours.device)
        key = edges[0] * dropper.n_items + edges[1]
        at = order[torch.searchsorted(key_ours[order], key).clamp_max(len(order) - 1)]
        if not torch.equal(key_ours[at], key):
            raise ValueError("an official SGL edge is not among our training edges")
        if len(idx) != keep:
            raise ValueError(f"the official view keeps {len(idx)} edges, ours {keep}")
        mask = torch.zeros(dropper.n_edges, dtype=torch.bool, device=key_ours.device)
        mask[at] = True
        return dropper.adjacency(mask)
    return mock.patch.object(dropper, "sample", replay)


def _replayed_source_pairs(ours, official, drawn: list):
    """Our SIBRAR's two sources per row are the first two the official multinomial drew."""
    pending = list(drawn)

    def replay(pos):
        idx = pending.pop(0)
        return idx[:, 0].to(pos.device), idx[:, 1].to(pos.device)
    return mock.patch.object(ours, "sample_sources", replay)


# models whose official draws come from torch.multinomial, replayed into ours
REPLAY = {"SGL": _replayed_edge_drops, "SIBRAR": _replayed_source_pairs}


def _official_gradients(official, batch, seed, drawn=None):
    seed_everything(seed)  # torch and numpy draws (MILK's mixing weights) start alike on every side
    with _recording_multinomial(drawn) if drawn is not None else contextlib.nullcontext():
        loss = official.calculate_loss(batch)
    loss.backward()
    return loss


def compare_step(model: str, ours: torch.nn.Module, official: torch.nn.Module,
                 users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, seed: int = 5,
                 perturbation: float = 1e-7) -> dict:
    """One batch through both models from equal weights: losses and, per parameter of ours,
    the largest gradient difference and the largest official gradient entry.

    As a yardstick, the official model is also run on weights scaled by (1 + ``perturbation``·N(0,1)):
    where its own gradients move by as much as ours differ from them, the difference is float
    rounding amplified by the model (CI2MG's Sinkhorn), not a different computation."""
    copied = copy_weights(ours, official, WEIGHTS[model])
    for side, attrs in zip((ours, official), NO_DROPOUT.get(model, ((), ()))):
        for attr in attrs:
            rate = getattr(side, attr)
            setattr(side, attr, [0.0] * len(rate) if isinstance(rate, (list, tuple)) else 0.0)
    twin = copy.deepcopy(official)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in twin.parameters():
            p.mul_(1.0 + perturbation * torch.randn(p.shape, generator=g).to(p.device))
    ours.zero_grad()
    official.zero_grad()
    twin.zero_grad()
    batch = torch.stack([users, pos, neg])
    drawn: list = []
    loss_official = _official_gradients(official, batch, seed, drawn if model in REPLAY else None)
    _official_gradients(twin, batch, seed, [] if model in REPLAY else None)
    seed_everything(seed)
    with REPLAY[model](ours, official, drawn) if model in REPLAY else contextlib.nullcontext():
        loss_ours = ours.calculate_loss(users, pos, neg)
    loss_ours.backward()
    off_params, twin_params = dict(official.named_parameters()), dict(twin.named_parameters())
    mine = dict(ours.named_parameters())
    grads = {}
    for key in (k for k in copied if k in mine):  # parameters; buffers have no gradient
        off_key = WEIGHTS[model][key]
        a, b, c = mine[key].grad, off_params[off_key].grad, twin_params[off_key].grad
        if a is None or b is None:
            grads[key] = {"max_diff": None if (a is None) != (b is None) else 0.0,
                          "max_official": None if b is None else float(b.abs().max()), "official_self": None}
            continue
        grads[key] = {"max_diff": float((a - b).abs().max()), "max_official": float(b.abs().max()),
                      "official_self": None if c is None else float((c - b).abs().max())}
    # an official parameter that learns from this batch but has no counterpart in ours is a difference
    mapped = set(WEIGHTS[model].values())
    unmatched = sorted(k for k, p in off_params.items()
                       if k not in mapped and p.grad is not None and bool(p.grad.abs().max() > 0))
    return {"loss_ours": loss_ours.item(), "loss_official": loss_official.item(), "gradients": grads,
            "official_only_with_gradient": unmatched}


def feature_differences(task, official) -> dict[str, float]:
    """Largest difference between the official model's feature tables and ours, per modality."""
    out = {}
    for m, attr in _FEATURES.items():
        theirs = getattr(official, attr, None)
        if theirs is not None and m in task.features:
            out[m] = float((theirs.detach().cpu() - task.features[m].cpu()).abs().max())
    return out


class OfficialInEngine(Recommender):
    """An official model class behind our model interface, so that our engine trains and
    evaluates it: its ``calculate_loss``/``full_sort_predict`` take the official batch layout."""
    group = "collaborative"
    uses_features = False

    def __init__(self, config, task, official: torch.nn.Module):
        super().__init__(config, task)
        self.official = official

    def calculate_loss(self, users, pos, neg):
        return self.official.calculate_loss(torch.stack([users, pos, neg]))

    def full_sort_predict(self, users):
        return self.official.full_sort_predict((users,))

    def pre_epoch(self, epoch):
        self.official.pre_epoch_processing()


def load_official(root: Path, model: str, seed: int, override: dict) -> torch.nn.Module:
    """The official ``model`` class built as the official quick start builds it (config, dataset,
    training loader, the first value of each grid key, seeds), from the private copy ``root``
    made by ``benchmarks.experiments.official_runs.workspace``; ``override`` as ``pinned_override`` gives it."""
    src = str(root / "src")
    for path in (str(root / "stubs"), src):
        if path not in sys.path:
            sys.path.insert(0, path)
    with contextlib.chdir(src):
        Config = importlib.import_module("utils.configurator").Config
        RecDataset = importlib.import_module("utils.dataset").RecDataset
        TrainDataLoader = importlib.import_module("utils.dataloader").TrainDataLoader
        init_seed = importlib.import_module("utils.utils").init_seed
        config_dict = {"gpu_id": "0", "missing_modal": 1, "missing_imputation": [1], "new_items": 0,
                       "save_best_model": False, "seed": [seed], **override}
        config = Config(model, "tiktok", config_dict)
        train_split = RecDataset(config).split()[0]
        loader = TrainDataLoader(config, train_split, batch_size=config["train_batch_size"], shuffle=True)
        for key in ["seed", *config["hyper_parameters"]]:
            value = config[key]
            config[key] = (value or [None])[0] if isinstance(value, list) or value is None else value
        init_seed(seed)
        loader.pretrain_setup()
        module_path = Path(src) / "models" / f"{model.lower()}.py"
        # a private module name: the official package is also called ``models``
        spec = importlib.util.spec_from_file_location(f"official_{model.lower()}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        official = getattr(module, model)(config, loader).to(config["device"])
        official.logger = logging.getLogger("official")
    return official


def main(argv=None) -> int:
    from benchmarks.run.discovery import registry_entry
    from models.cache import ArtifactCache
    from benchmarks.core.engine import Trainer
    from benchmarks.run.jobs import DatasetRef, load_dataset
    from benchmarks.experiments.official_runs import official_settings, pinned_override, workspace
    from benchmarks.core.protocols import get_protocol
    from benchmarks.run.runner import RunOptions, plan
    from benchmarks.core.sampling import BPRSampler

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", required=True, help="the src folder of a ptkjw1997/DGMRec checkout")
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", action="store_true", help="train the official class in our engine for --seeds")
    ap.add_argument("--seeds", default="999")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--data-root", default=str(REFERENCE))
    ap.add_argument("--official", default=str(OFFICIAL_RESULTS), help="where the model's settings come from")
    ap.add_argument("--out", default=None, help="JSON file for the --train results")
    args = ap.parse_args(argv)
    src, data_dir = Path(args.official_src), Path(args.data_root) / "tiktok"
    if not (src / "main.py").is_file():
        raise SystemExit(f"{src}: not the official src folder (no main.py)")
    if not data_dir.is_dir():
        raise SystemExit(f"{data_dir}: reference TikTok folder not found")
    if args.train and args.model in OWN_TRAINING_STEPS:
        raise SystemExit(f"--train cannot run {args.model}: {OWN_TRAINING_STEPS[args.model]}")
    if not args.train and args.model not in WEIGHTS:
        raise SystemExit(f"no weight map for {args.model} (have: {', '.join(WEIGHTS)}); --train needs none")
    seeds = parse_seeds(args.seeds)
    if not Path(args.official).is_file():
        raise SystemExit(f"{args.official}: official results not found (they give the model's settings)")
    record = official_settings(Path(args.official)).get(args.model)
    if record is None:
        raise SystemExit(f"no seed-999 settings for {args.model} in {args.official}")
    override, setting = pinned_override(record), official_setting(record)

    ours_plan = plan(RunOptions(protocols=["missing"], datasets=["tiktok"], models=[args.model], seeds=[seeds[0]],
                                data_root=args.data_root, sets={"epochs": args.epochs, **setting},
                                cache_dir=None, progress=False))
    spec = ours_plan.jobs[0]
    cfg = spec["config"]
    cls = registry_entry(args.model).cls
    task = get_protocol("missing").build_task(load_dataset(DatasetRef(**spec["dataset_ref"])), cfg, cls,
                                              spec["missing_ratio"], torch.device("cpu"), ArtifactCache(None))
    root = workspace(src, data_dir, "tiktok")
    try:
        if not args.train:
            official = load_official(root, args.model, seeds[0], override)
            torch.manual_seed(seeds[0])
            ours = cls(cfg, task)
            users, pos, neg = next(BPRSampler(task, np.random.default_rng(seeds[0])).epoch(int(cfg["train_batch_size"])))
            out = compare_step(args.model, ours, official, users, pos, neg)
            feats = feature_differences(task, official)
            print(f"{args.model}: one batch of {len(users)} from equal weights")
            print(f"  loss ours {out['loss_ours']!r}  official {out['loss_official']!r}")
            def fmt(x):
                return "none" if x is None else f"{x:.3g}"
            for key, g in out["gradients"].items():
                print(f"  gradient {key}: largest difference {fmt(g['max_diff'])} (official vs itself on weights "
                      f"perturbed by 1e-7: {fmt(g['official_self'])}), largest official entry {fmt(g['max_official'])}")
            unmatched = out["official_only_with_gradient"]
            print(f"  official parameters with a gradient and no counterpart in ours: {', '.join(unmatched) or 'none'}")
            for m, d in feats.items():
                print(f"  feature table {m}: largest difference from ours {d}")
            return 0
        results = []
        for seed in seeds:
            rng = seed_everything(seed)
            model = OfficialInEngine(cfg, task, load_official(root, args.model, seed, override))
            r = Trainer(model, task, cfg, rng).run()
            results.append({"model": args.model, "seed": seed, "best_epoch": r.best_epoch,
                            "test": {k: r.test[k] for k in ("recall@20", "ndcg@20")},
                            "curve": [{k: c.get(k) for k in ("epoch", "train_loss", "valid_recall@20", "test_recall@20")}
                                      for c in r.curve]})
            print(f"{args.model} (official class, our engine) seed {seed}: best epoch {r.best_epoch}, "
                  f"R@20 {r.test['recall@20']:.4f}, N@20 {r.test['ndcg@20']:.4f}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
        for metric in ("recall@20", "ndcg@20"):
            vals = np.array([r["test"][metric] for r in results])
            print(f"mean {metric} over {len(vals)} seeds: {vals.mean():.4f}"
                  + (f" ± {vals.std(ddof=1):.4f}" if len(vals) > 1 else ""))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DataError as exc:  # a malformed official results file
        raise SystemExit(str(exc))
