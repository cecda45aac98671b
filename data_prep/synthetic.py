"""Synthetic replicas of the DGMRec datasets, the suite's embedded default data.

The real feature files are not reachable (and TikTok's are not public), so the suite
must be able to run end to end on data it makes itself. A replica has the shape of the
real dataset (users, items, interactions, feature dimensions, modalities, splits, new
items, masks at the official ratios) and a structure under which the paper's questions
mean something:

* every item has latent factors: a *general* part that all modalities express, a
  *specific* part per modality, and a *collaborative-only* part no feature shows;
* a user's preference is the sum of the dot products over all parts, so content
  features predict preferences (content helps), each modality carries information the
  others lack (a missing modality hurts), and interactions carry information no feature
  carries (collaborative filtering still matters);
* item popularity and user activity are long-tailed, as in real 5-core data;
* each user's items are drawn without replacement with probability proportional to
  ``popularity * exp(preference)`` (the Gumbel top-k trick);
* features are fixed random projections of [general | specific] plus noise, with the
  marginal look of the real ones: image clipped at 0 (CNN activations), text rows of unit
  norm (sentence embeddings), audio left as it is.

Everything is a deterministic function of (kind, scale, seed). Numbers obtained on a
replica are not comparable to the paper's; replicas exist to exercise and compare code.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .dataset import MODALITY_FILES, Dataset, Interactions, sha256_arrays
from .masks import draw_missing_mask, item_strata, mask_file_ratio, new_item_split
from .modalities import Modalities

# Real shapes at scale 1 (users, items, interactions; feature dimension per modality).
REAL_SHAPES = {
    "baby": dict(users=19445, items=7050, inters=160792, dims={"v": 4096, "t": 384}),
    "sports": dict(users=35598, items=18357, inters=296337, dims={"v": 4096, "t": 384}),
    "clothing": dict(users=39387, items=23033, inters=278677, dims={"v": 4096, "t": 384}),
    "elec": dict(users=192403, items=63001, inters=1689188, dims={"v": 4096, "t": 384}),
    "tiktok": dict(users=9308, items=6710, inters=68722, dims={"v": 128, "t": 768, "a": 128}),
}
KINDS = tuple(REAL_SHAPES)
# Official mask ratios per kind (the Amazon 2/3 file is named '0.666').
MASK_RATIOS = {"tiktok": (0.6, 0.75)}
DEFAULT_MASK_RATIOS = (2 / 3,)

MIN_USERS, MIN_ITEMS = 100, 60
MIN_PER_USER = 5          # like 5-core data
# Calibrated so that a converged run looks like the real data (see README, "Quick start"):
# trained graph models well above item popularity and content helping most for new items.
# Low-rank tastes (4 factors per part) that a user's few interactions can reveal, a strong
# preference term, and a popularity term too weak to win on its own.
FACTOR_DIM = 4            # per part: general, each modality, collaborative-only
PREF_STD = 8.0            # std of the preference logit (all parts together)
POP_SIGMA = 0.8           # std of the log-popularity (log-normal item popularity)
ACTIVITY_SIGMA = 1.0      # std of the log of a user's extra interactions (log-normal)
FEATURE_NOISE = 1.0       # std of the Gaussian noise added to projected features
SAMPLE_BLOCK = 1 << 22    # users x items scores per sampling chunk (16 MiB of float32)
_TINY = np.float32(np.finfo(np.float32).tiny)


def _check_args(kind: str, scale: float) -> None:
    if kind not in REAL_SHAPES:
        raise ValueError(f"unknown synthetic dataset kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"scale must be a number in (0, 1], got {scale!r}")
    if not (math.isfinite(float(scale)) and 0.0 < float(scale) <= 1.0):
        raise ValueError(f"scale must be in (0, 1] (1 = the real dataset's size), got {scale}")


def replica_shape(kind: str, scale: float = 1.0) -> dict:
    """Users, items and interactions of a replica; feature dimensions never scale."""
    _check_args(kind, scale)
    real = REAL_SHAPES[kind]
    n_users = max(MIN_USERS, int(round(scale * real["users"])))
    n_items = max(MIN_ITEMS, int(round(scale * real["items"])))
    # Keep the real mean number of interactions per user (what the density of the
    # training graph and the per-user splits depend on).
    n_inter = int(round(n_users * real["inters"] / real["users"]))
    return dict(users=n_users, items=n_items, inters=n_inter, dims=dict(real["dims"]))


# --------------------------------------------------------------------------- generation

def _user_counts(rng: np.random.Generator, n_users: int, n_items: int, total: int) -> np.ndarray:
    """Long-tailed interactions per user: 5 + a log-normal share of the rest, summing to total."""
    cap = max(MIN_PER_USER + 2, min(n_items // 2, 1000))
    total = int(min(max(total, MIN_PER_USER * n_users), cap * n_users))
    w = rng.lognormal(0.0, ACTIVITY_SIGMA, n_users)
    extra = w * ((total - MIN_PER_USER * n_users) / w.sum())
    counts = MIN_PER_USER + np.floor(extra).astype(np.int64)
    # Hand out what flooring lost to the largest remainders, so the total is exact.
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(extra - np.floor(extra)), kind="stable")[:short]] += 1
    counts = np.minimum(counts, cap)
    short = total - int(counts.sum())
    while short > 0:  # a few rounds at most: spread the capped excess over users with room
        room = np.flatnonzero(counts < cap)
        pick = rng.choice(room, size=min(short, len(room)), replace=False)
        counts[pick] += 1
        short -= len(pick)
    return counts


def _sample_items(rng: np.random.Generator, user_f: np.ndarray, item_f_t: np.ndarray,
                  log_pop: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's items without replacement, P ∝ pop·exp(pref), by Gumbel top-k in chunks.

    Adding Gumbel noise (-log of an Exp(1) variable) to the logits and keeping the k
    largest is an exact draw of k items without replacement with probabilities
    proportional to exp(logit). Top-k is done by torch (deterministic, much faster than
    numpy's argpartition on wide rows).
    """
    import torch

    n_users, n_items = len(user_f), item_f_t.shape[1]
    block = max(1, SAMPLE_BLOCK // n_items)
    users_out, items_out = [], []
    for lo in range(0, n_users, block):
        hi = min(n_users, lo + block)
        logits = user_f[lo:hi] @ item_f_t
        logits += log_pop
        noise = rng.standard_exponential(logits.shape, dtype=np.float32)
        np.maximum(noise, _TINY, out=noise)  # an exact 0 would make log -inf
        np.log(noise, out=noise)
        logits -= noise
        c = counts[lo:hi]
        k = int(c.max())
        top = torch.topk(torch.from_numpy(logits), k, dim=1, largest=True, sorted=True).indices.numpy()
        keep = np.arange(k)[None, :] < c[:, None]
        users_out.append(np.repeat(np.arange(lo, hi, dtype=np.int64), c))
        items_out.append(top[keep].astype(np.int64))
    return np.concatenate(users_out), np.concatenate(items_out)


def _split_labels(rng: np.random.Generator, users: np.ndarray, counts: np.ndarray, kind: str) -> np.ndarray:
    """Per-user random 80/10/10 train/valid/test labels, at least one of each per user.

    TikTok's real files have exactly one valid and one test interaction per user, so the
    tiktok replica does the same.
    """
    order = np.lexsort((rng.random(len(users)), users))  # users are grouped; shuffle within
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - np.repeat(starts, counts)
    if kind == "tiktok":
        n_test = n_valid = np.ones_like(counts)
    else:
        n_test = np.maximum(1, np.round(0.1 * counts).astype(np.int64))
        n_valid = np.maximum(1, np.round(0.1 * counts).astype(np.int64))
    n_test, n_valid = n_test[users], n_valid[users]
    labels = np.zeros(len(users), dtype=np.int8)
    labels[rank < n_test + n_valid] = 1
    labels[rank < n_test] = 2
    return labels


def _features(rng: np.random.Generator, general: np.ndarray, specific: np.ndarray, dim: int,
              modality: str) -> np.ndarray:
    z = np.concatenate((general, specific), axis=1)
    proj = rng.standard_normal((z.shape[1], dim), dtype=np.float32) / np.float32(math.sqrt(z.shape[1]))
    x = rng.standard_normal((z.shape[0], dim), dtype=np.float32)
    x *= np.float32(FEATURE_NOISE)
    rows = max(1, SAMPLE_BLOCK // dim)
    for lo in range(0, len(x), rows):  # in row blocks: no second items x dim temporary
        x[lo:lo + rows] += z[lo:lo + rows] @ proj
    if modality == "v":
        np.maximum(x, 0.0, out=x)
    elif modality == "t":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x /= np.maximum(norm, np.float32(1e-12))
    return x


def make_replica(kind: str, scale: float = 1.0, seed: int = 2025) -> Dataset:
    """A synthetic dataset shaped like ``kind`` at ``scale``, deterministic in (kind, scale, seed).

    Users and items scale by ``scale`` (at least 100 users and 60 items); interactions
    scale so that the mean per user stays the real one; feature dimensions never scale.
    New items and masks follow the official procedures (``data_prep.masks``) on the
    replica's training counts, with the official seeds.
    """
    shape = replica_shape(kind, scale)
    n_users, n_items, dims = shape["users"], shape["items"], shape["dims"]
    modalities = Modalities(dims)
    kind_id = KINDS.index(kind)
    (r_factor, r_pop, r_count, r_sample, r_split, r_feat) = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), kind_id]).spawn(6))

    # Latent factors: general, one specific block per modality, collaborative-only.
    parts = ("general",) + modalities + ("collab",)
    item_parts = {p: r_factor.standard_normal((n_items, FACTOR_DIM), dtype=np.float32) for p in parts}
    user_f = r_factor.standard_normal((n_users, FACTOR_DIM * len(parts)), dtype=np.float32)
    user_f *= np.float32(PREF_STD / math.sqrt(FACTOR_DIM * len(parts)))
    log_pop = (r_pop.standard_normal(n_items) * POP_SIGMA).astype(np.float32)

    counts = _user_counts(r_count, n_users, n_items, shape["inters"])
    item_f_t = np.ascontiguousarray(np.concatenate([item_parts[p] for p in parts], axis=1).T)
    users, items = _sample_items(r_sample, user_f, item_f_t, log_pop, counts)
    del item_f_t

    # The official loader counts items as max id + 1, so the last id must occur in the
    # file; if it drew no interaction, swap its id with the largest id that did.
    seen = np.bincount(items, minlength=n_items) > 0
    last = n_items - 1
    if not seen[last]:
        j = int(np.flatnonzero(seen).max())
        items = np.where(items == j, last, items)
        for p in parts:
            item_parts[p][[j, last]] = item_parts[p][[last, j]]

    labels = _split_labels(r_split, users, counts, kind)
    order = np.lexsort((items, labels, users))
    inter = Interactions(users[order], items[order], labels[order], source=f"synthetic:{kind}")

    features = {m: _features(r_feat, item_parts["general"], item_parts[m], dims[m], m) for m in modalities}

    train_counts = np.bincount(inter.items[inter.labels == 0], minlength=n_items)
    strata = item_strata(train_counts)
    new_items = np.sort(np.concatenate((strata["new_cold"], strata["new_warm"]))).astype(np.int64)
    del_inter = new_item_split(inter, new_items)
    masks = {}
    for r in MASK_RATIOS.get(kind, DEFAULT_MASK_RATIOS):
        masks[mask_file_ratio(r)] = draw_missing_mask(strata, r, modalities.count, n_items=n_items)

    arrays = [inter.users, inter.items, inter.labels, del_inter.users, del_inter.items, del_inter.labels, new_items]
    arrays += [features[m] for m in modalities]
    for r in sorted(masks):
        arrays += [masks[r][k] for k in masks[r]]
    ds = Dataset(
        name=f"synthetic:{kind}", kind=kind, source="synthetic", n_users=n_users, n_items=n_items,
        inter=inter, del_inter=del_inter, new_items=new_items, features=features, masks=masks,
        fingerprint={"synthetic": sha256_arrays(*arrays)},
        description=f"synthetic replica of {kind} at scale {scale}, seed {seed}",
    )
    return ds.validate()


# --------------------------------------------------------------------------- writing

def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _inter_bytes(inter: Interactions) -> bytes:
    table = np.column_stack((inter.users, inter.items, inter.labels.astype(np.int64)))
    body = "\n".join("\t".join(map(str, row)) for row in table.tolist())
    return ("userID\titemID\tx_label\n" + body + "\n").encode()


def write_dataset(ds: Dataset, root: str | Path) -> Path:
    """Write a dataset to ``<root>/<kind>/`` in the official file format; return the folder.

    ``data_prep.dataset.load_folder(root, ds.kind)`` reads back the same arrays. Each file
    is written to a temporary name and renamed, so a reader never sees a half file.
    """
    folder = Path(root) / ds.kind
    folder.mkdir(parents=True, exist_ok=True)
    if ds.inter is not None:
        _atomic_write(folder / f"{ds.kind}.inter", lambda f: f.write(_inter_bytes(ds.inter)))
    if ds.del_inter is not None:
        _atomic_write(folder / f"{ds.kind}_del.inter", lambda f: f.write(_inter_bytes(ds.del_inter)))
    if ds.new_items is not None:
        _atomic_write(folder / "new_items.npy", lambda f: np.save(f, np.asarray(ds.new_items, dtype=np.int64)))
    for m, x in ds.features.items():
        _atomic_write(folder / MODALITY_FILES[m], lambda f, x=x: np.save(f, np.asarray(x, dtype=np.float32)))
    for ratio, groups in ds.masks.items():
        obj = {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
        _atomic_write(folder / f"missing_items_{ratio}.npy",
                      lambda f, obj=obj: np.save(f, obj, allow_pickle=True))
    return folder
