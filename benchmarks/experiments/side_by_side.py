"""Same computation: an official model class beside ours, on identical weights and batches.

    python -m benchmarks.experiments.side_by_side --source CHECKOUT --data-dir ../shared/data/reference/baby --model LightGCN
    python -m benchmarks.experiments.side_by_side --source CHECKOUT --model SGL --train --seeds 999,42,2023

Builds the official class with the official data pipeline from a checkout (work tree or git
directory) of ``ptkjw1997/DGMRec`` or ``enoche/MMRec`` on a dataset folder (default: reference
TikTok), in a private copy prepared as ``official_runs`` does and with the settings it would
run (``official_settings``: DGMRec release: its best file, the folder's missing ratio; MMRec:
every feature present, each grid key pinned to ours or ``--set``), and:

* by default (**check**) copies the official initial weights into ours (the model's map in
  ``weight_maps.WEIGHTS``), sends one BPR batch of our sampler through both ``calculate_loss``
  with the randomness aligned, and prints the two losses, the largest gradient difference of
  every parameter beside the official model's own change under a 1e-7 weight perturbation, and
  the largest difference between the two sides' feature tables (masked and imputed where the
  protocol masks);
* with ``--train`` trains and evaluates the official class with our engine (sampler,
  optimiser, schedule, evaluator) for each seed, to tell a model difference from a
  training-loop difference.

``--protocol new_items`` (DGMRec release, on a folder with new items) builds both sides in
new-item mode. How randomness is aligned and what the results were: docs/fidelity.md.
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

from benchmarks.core.engine import seed_everything
from benchmarks.experiments.bench_common import REFERENCE, parse_seeds
from benchmarks.experiments.official_checkout import COMPAT_MODULE, DGMREC, MMREC
from benchmarks.experiments.weight_maps import NO_DROPOUT, WEIGHTS
from data_prep.errors import DataError
from models.base import Recommender

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
    """Our SGL views (FREEDOM's pruned graph) built from the official draws: each draw indexes the
    official edge list (``edge_indices``), mapped to our edge order by (user, item)."""
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
REPLAY = {(DGMREC, "SGL"): _replayed_edge_drops, (DGMREC, "SIBRAR"): _replayed_source_pairs}


def _replayed_epoch_graph(ours, official) -> None:
    """The official epoch hook draws the training graph (FREEDOM's, PGL's and MMGCF's degree-sensitive
    edge sample, torch.multinomial); ours takes the very edges it drew."""
    drawn: list = []
    with _recording_multinomial(drawn):
        official.pre_epoch_processing()
    with _replayed_edge_drops(ours, official, drawn):
        ours.pre_epoch(0)


def _official_user_graph(ours, official) -> None:
    """MMRec's DRAGON draws its epoch's user graph in ``pre_epoch_processing`` (numpy draws):
    the official model draws it and ours takes that very sample. Its initial ``result_embed``
    (a copy of a parameter, replaced by every forward pass) is detached so that the model can be
    deep-copied for the perturbed twin."""
    official.result_embed = official.result_embed.detach()
    official.pre_epoch_processing()
    ours.use_user_graph(torch.as_tensor(official.epoch_user_graph), official.user_weight_matrix)


# models whose official per-epoch step draws state that the batch needs: run once per side before
# the batch, and before the perturbed twin is copied so that it uses the same draw
EPOCH_STATE = {(MMREC, "DRAGON"): _official_user_graph, (MMREC, "FREEDOM"): _replayed_epoch_graph,
               (MMREC, "PGL"): _replayed_epoch_graph, (MMREC, "MMGCF"): _replayed_epoch_graph}


def _official_gradients(official, batch, seed, drawn=None):
    seed_everything(seed)  # torch and numpy draws (MILK's mixing weights) start alike on every side
    with _recording_multinomial(drawn) if drawn is not None else contextlib.nullcontext():
        loss = official.calculate_loss(batch.clone())  # MMRec's DRAGON shifts the item ids in place
    loss.backward()
    return loss


def compare_step(model: str, ours: torch.nn.Module, official: torch.nn.Module,
                 users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, seed: int = 5,
                 perturbation: float = 1e-7, codebase: str = DGMREC) -> dict:
    """One batch through both models from equal weights: losses and, per parameter of ours,
    the largest gradient difference and the largest official gradient entry.

    As a yardstick, the official model is also run on weights scaled by (1 + ``perturbation``·N(0,1)):
    where its own gradients move by as much as ours differ from them, the difference is float
    rounding amplified by the model (CI2MG's Sinkhorn), not a different computation."""
    key = (codebase, model)
    mapping, replay = WEIGHTS[key], REPLAY.get(key)
    copied = copy_weights(ours, official, mapping)
    if key in EPOCH_STATE:
        seed_everything(seed)
        EPOCH_STATE[key](ours, official)
    for side, attrs in zip((ours, official), NO_DROPOUT.get(key, ((), ()))):
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
    loss_official = _official_gradients(official, batch, seed, drawn if replay else None)
    _official_gradients(twin, batch, seed, [] if replay else None)
    seed_everything(seed)
    with replay(ours, official, drawn) if replay else contextlib.nullcontext():
        loss_ours = ours.calculate_loss(users, pos, neg)
    loss_ours.backward()
    # every name of a parameter: a forward pass may register one again under a second name (MMRec's
    # DRAGON stores its preference tables as v_preference/t_preference), which would hide the first
    off_params, twin_params = (dict(m.named_parameters(remove_duplicate=False)) for m in (official, twin))
    mine = dict(ours.named_parameters())
    grads = {}
    for name in (k for k in copied if k in mine):  # parameters; buffers have no gradient
        off_key = mapping[name]
        a, b, c = mine[name].grad, off_params[off_key].grad, twin_params[off_key].grad
        if a is None or b is None:
            grads[name] = {"max_diff": None if (a is None) != (b is None) else 0.0,
                           "max_official": None if b is None else float(b.abs().max()), "official_self": None}
            continue
        grads[name] = {"max_diff": float((a - b).abs().max()), "max_official": float(b.abs().max()),
                       "official_self": None if c is None else float((c - b).abs().max())}
    # an official parameter that learns from this batch but has no counterpart in ours is a difference
    mapped = {id(off_params[k]) for k in mapping.values() if k in off_params}
    unmatched = sorted(k for k, p in off_params.items()
                       if id(p) not in mapped and p.grad is not None and bool(p.grad.abs().max() > 0))
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


def load_official(root: Path, model: str, seed: int, override: dict, codebase: str = DGMREC,
                  dataset: str = "tiktok", ratio: float | None = None, new_items: bool = False) -> torch.nn.Module:
    """The official ``model`` class built as the official quick start builds it (config, dataset,
    training loader, the first value of each grid key, seeds) on the CPU, from the private copy
    ``root`` made by ``official_checkout.workspace``; ``override`` as ``official_runs.settings_for``
    gives it (DGMRec release: its config override, with missing ratio ``ratio``; MMRec: the
    model YAML, written into the copy)."""
    src = str(root / "src")
    for path in (str(root / "stubs"), src):
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.import_module(COMPAT_MODULE)
    with contextlib.chdir(src):
        Config = importlib.import_module("utils.configurator").Config
        RecDataset = importlib.import_module("utils.dataset").RecDataset
        TrainDataLoader = importlib.import_module("utils.dataloader").TrainDataLoader
        init_seed = importlib.import_module("utils.utils").init_seed
        if codebase == MMREC:
            import yaml

            from benchmarks.experiments.official_settings import ensure_mmrec_dataset_yaml
            configs = Path(src) / "configs"
            (configs / "model" / f"{model}.yaml").write_text(yaml.safe_dump(dict(override, seed=[seed]), sort_keys=False))
            ensure_mmrec_dataset_yaml(configs, dataset)
            config = Config(model, dataset, {"gpu_id": 0, "use_gpu": False})
        else:
            config_dict = {"gpu_id": "", "use_gpu": False, "missing_modal": 1, "missing_imputation": [1],
                           "new_items": int(new_items), "save_best_model": False, "seed": [seed], **override}
            if ratio is not None:
                config_dict["missing_ratio"] = ratio
            config = Config(model, dataset, config_dict)
            if new_items:  # as the release's quick start: the interaction file without new items' training rows
                config["inter_file_name"] = f"{dataset}_del.inter"
        dataset_all = RecDataset(config)
        splits = dataset_all.split()
        train_split = splits[0][0] if new_items else splits[0]
        # as the quick start, which logs the datasets: their __str__ sets the inter_num MMRec's loader reads
        for d in (dataset_all, train_split):
            str(d)
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
        sys.modules[spec.name] = module  # torch_geometric reads a layer's annotations through its module (DRAGON)
        spec.loader.exec_module(module)
        official = getattr(module, model)(config, loader).to(config["device"])
        official.logger = logging.getLogger("official")
    return official


def our_side(codebase: str, model: str, folder, protocol: str, sets: dict, seed: int):
    """(our model class, its resolved configuration, the task) on ``folder`` under ``protocol``
    with ``sets``, on the CPU, as our runner builds them."""
    from benchmarks.core.protocols import get_protocol
    from benchmarks.experiments.weight_maps import our_name
    from benchmarks.run.discovery import registry_entry
    from benchmarks.run.jobs import DatasetRef, load_dataset
    from benchmarks.run.runner import RunOptions, plan
    from models.cache import ArtifactCache
    name = our_name(codebase, model)
    spec = plan(RunOptions(protocols=[protocol], datasets=[folder.name], models=[name], seeds=[seed],
                           data_root=str(folder.path.resolve().parent), full=True, sets=sets,
                           cache_dir=None, progress=False)).jobs[0]
    cfg = spec["config"]
    cls = registry_entry(name).cls
    task = get_protocol(protocol).build_task(load_dataset(DatasetRef(**spec["dataset_ref"])), cfg, cls,
                                             spec["missing_ratio"], torch.device("cpu"), ArtifactCache(None))
    return cls, cfg, task


def _print_check(model: str, n: int, out: dict, feats: dict) -> None:
    def fmt(x):
        return "none" if x is None else f"{x:.3g}"
    print(f"{model}: one batch of {n} from equal weights")
    print(f"  loss ours {out['loss_ours']!r}  official {out['loss_official']!r}")
    for key, g in out["gradients"].items():
        print(f"  gradient {key}: largest difference {fmt(g['max_diff'])} (official vs itself on weights "
              f"perturbed by 1e-7: {fmt(g['official_self'])}), largest official entry {fmt(g['max_official'])}")
    unmatched = out["official_only_with_gradient"]
    print(f"  official parameters with a gradient and no counterpart in ours: {', '.join(unmatched) or 'none'}")
    for m, d in feats.items():
        print(f"  feature table {m}: largest difference from ours {d}")


def prepare(args, folder, official_sets: dict) -> tuple:
    """(the private copy, the code base, the official override, its missing ratio, our ``--set``)
    for ``args.model`` on ``folder``; the checkout is only read here."""
    from benchmarks.experiments.official_checkout import open_checkout, workspace
    from benchmarks.experiments.official_runs import settings_for
    from benchmarks.experiments.official_settings import SettingError, ours_from_official
    from benchmarks.experiments.user_graph import USER_GRAPH, needs_user_graph, user_graph_file
    with open_checkout(args.source) as checkout:
        codebase = checkout.codebase
        if not args.train and (codebase, args.model) not in WEIGHTS:
            have = ", ".join(m for c, m in WEIGHTS if c == codebase)
            raise SystemExit(f"no {codebase} weight map for {args.model} in weight_maps.WEIGHTS (have: {have}); "
                             "--train needs none")
        if codebase == MMREC and args.protocol != "missing":
            raise SystemExit("MMRec has no new-item mode: --protocol missing")
        try:
            override, pinned, ratio = settings_for(checkout, folder, args.model, official_sets, args.epochs)
        except SettingError as exc:
            raise SystemExit(str(exc)) from None
        values = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in override.items() if k in pinned}
        sets = dict(ours_from_official(codebase, args.model, dict(values, **official_sets)),
                    epochs=args.epochs, missing_ratio=ratio or 0.0)
        extra = {USER_GRAPH: user_graph_file(checkout, folder, args.cache_dir)} \
            if needs_user_graph(codebase, args.model, folder) else {}
        return workspace(checkout.src, folder.path, folder.name, extra), codebase, override, ratio, sets


def main(argv=None) -> int:
    from benchmarks.core.engine import Trainer
    from benchmarks.core.sampling import BPRSampler
    from benchmarks.experiments.official_checkout import CheckoutError, data_folder
    from benchmarks.run.config import ConfigError, parse_sets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="a work tree or git directory of ptkjw1997/DGMRec or enoche/MMRec")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", default=str(REFERENCE / "tiktok"))
    ap.add_argument("--protocol", choices=("missing", "new_items"), default="missing")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value: an official setting, "
                    "pinned on both sides (under our name where weight_maps.SETTING_NAMES has one)")
    ap.add_argument("--train", action="store_true", help="train the official class in our engine for --seeds")
    ap.add_argument("--seeds", default="999")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--cache-dir", default="cache", help="where MMRec's generated user graph is kept")
    ap.add_argument("--out", default=None, help="JSON file for the --train results")
    args = ap.parse_args(argv)
    try:
        folder = data_folder(args.data_dir)
        official_sets = parse_sets(args.sets)
    except (ValueError, ConfigError) as exc:
        raise SystemExit(str(exc)) from None
    if args.train and args.model in OWN_TRAINING_STEPS:
        raise SystemExit(f"--train cannot run {args.model}: {OWN_TRAINING_STEPS[args.model]}")
    seeds = parse_seeds(args.seeds)
    try:
        root, codebase, override, ratio, sets = prepare(args, folder, official_sets)
    except CheckoutError as exc:
        raise SystemExit(str(exc)) from None
    try:
        cls, cfg, task = our_side(codebase, args.model, folder, args.protocol, sets, seeds[0])

        def official(seed):
            return load_official(root, args.model, seed, override, codebase, folder.name, ratio,
                                 args.protocol == "new_items")
        if not args.train:
            theirs = official(seeds[0])
            torch.manual_seed(seeds[0])
            ours = cls(cfg, task)
            users, pos, neg = next(BPRSampler(task, np.random.default_rng(seeds[0])).epoch(int(cfg["train_batch_size"])))
            out = compare_step(args.model, ours, theirs, users, pos, neg, codebase=codebase)
            print(f"{codebase} {args.model} on {folder.name} ({args.protocol}, missing ratio {ratio or 0.0:g}); "
                  f"ours with {sets}")
            _print_check(args.model, len(users), out, feature_differences(task, theirs))
            return 0
        results = []
        for seed in seeds:
            rng = seed_everything(seed)
            model = OfficialInEngine(cfg, task, official(seed))
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
