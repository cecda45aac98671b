"""Cross-modal retrieval with generated features (the paper's retrieval table), an analysis of the missing protocol.

For every item i whose modality m is missing and for which the model generated a raw
feature x̂_i^m, the query x̂_i^m is ranked by cosine similarity against the gallery of the
*true* features x_j^m of all items; Hit@K is 1 when the true x_i^m is among the top K.
Queries are grouped by how many modalities their item misses (``missing1``: one,
``missing2``: two).

Nearest-neighbour baseline: with the item's observed modalities (their L2-normalised rows
concatenated, so the cosine is the mean over them), find the most similar other item that
is observed in every modality, and use its true feature of modality m as the prediction.
Items missing every modality have no observed modality and no baseline.

The true features exist only inside this analysis, built by the protocol from the raw
dataset; the model never receives them. The analysis reads only what the model returns
from ``generated_features()``: ``{modality: (item_ids, features)}``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from data_prep import masks as mask_lib

HIT_KS = (10, 20)
CHUNK = 1024


def _rank_of_truth(queries: torch.Tensor, gallery_n: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """0-based rank of gallery row ``truth[q]`` for each query under cosine similarity."""
    ranks = []
    qn = F.normalize(queries.float(), dim=1)
    for lo in range(0, len(qn), CHUNK):
        sim = qn[lo:lo + CHUNK] @ gallery_n.T
        own = sim.gather(1, truth[lo:lo + CHUNK].unsqueeze(1))
        ranks.append((sim > own).sum(dim=1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


class RetrievalAnalysis:
    """Captures the generated features at each best-validation epoch; scores them at the end."""

    name = "retrieval"

    def __init__(self, true_features: dict[str, np.ndarray], groups: dict[str, np.ndarray], n_items: int,
                 modalities: tuple[str, ...]):
        self.true = {m: torch.from_numpy(np.asarray(x, dtype=np.float32)) for m, x in true_features.items()}
        self.modalities = modalities
        self.missing = mask_lib.per_modality_missing(groups, modalities, n_items)
        self.level = mask_lib.missing_level(groups, n_items, len(modalities))

    @staticmethod
    def applies_to(model_cls) -> bool:
        return callable(getattr(model_cls, "generated_features", None))

    def capture(self, model) -> dict:
        with torch.no_grad():
            out = model.generated_features()
        return {m: (np.asarray(ids, dtype=np.int64), torch.as_tensor(f).detach().to("cpu", torch.float32).clone())
                for m, (ids, f) in out.items()}

    def finalize(self, captured: dict) -> dict:
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        observed_all = ~np.any(np.stack([self.missing[m] for m in self.modalities]), axis=0)
        for m, (ids, feats) in captured.items():
            if len(ids) == 0:
                continue
            gallery = F.normalize(self.true[m], dim=1)
            truth = torch.from_numpy(ids)
            model_rank = _rank_of_truth(feats, gallery, truth)
            nn_pred, nn_ok = self._nearest_neighbour(ids, m, observed_all)
            nn_rank = _rank_of_truth(nn_pred, gallery, truth[nn_ok]) if nn_ok.any() else None
            for lv in (1, 2):
                sel = self.level[ids] == lv
                if not sel.any():
                    continue
                key = f"missing{lv}"
                counts[f"{key}_{m}"] = int(sel.sum())
                for k in HIT_KS:
                    metrics.setdefault(f"{key}_dgmrec_hit@{k}", []).extend((model_rank[torch.from_numpy(sel)] < k).tolist())
                if nn_rank is not None:
                    sel_nn = sel[nn_ok]
                    if sel_nn.any():
                        for k in HIT_KS:
                            metrics.setdefault(f"{key}_nn_hit@{k}", []).extend(
                                (nn_rank[torch.from_numpy(sel_nn)] < k).tolist())
        out = {k: float(np.mean(v)) for k, v in metrics.items()}
        out.update({f"n_queries_{k}": v for k, v in counts.items()})
        return out

    def _nearest_neighbour(self, ids: np.ndarray, m: str, observed_all: np.ndarray):
        """The true feature of m of each query's nearest fully observed item in its observed modalities."""
        ok = np.zeros(len(ids), dtype=bool)
        others = [o for o in self.modalities if o != m]
        candidates = np.flatnonzero(observed_all)
        if len(candidates) == 0:
            return torch.zeros(0, self.true[m].shape[1]), ok
        # Queries grouped by which other modalities they have observed: one product per pattern.
        code = sum((~self.missing[o][ids]).astype(np.int64) << j for j, o in enumerate(others))
        patterns = {tuple(o for j, o in enumerate(others) if c >> j & 1): np.flatnonzero(code == c)
                    for c in np.unique(code) if c}
        pred = torch.zeros(len(ids), self.true[m].shape[1])
        for seen, positions in patterns.items():
            q = torch.cat([F.normalize(self.true[o][ids[positions]], dim=1) for o in seen], dim=1)
            g = torch.cat([F.normalize(self.true[o][candidates], dim=1) for o in seen], dim=1)
            best = []
            for lo in range(0, len(q), CHUNK):
                sim = q[lo:lo + CHUNK] @ g.T
                own = torch.from_numpy(candidates).unsqueeze(0) == torch.from_numpy(ids[positions[lo:lo + CHUNK]]).unsqueeze(1)
                sim[own] = -float("inf")  # j != i
                best.append(sim.argmax(dim=1))
            pred[positions] = self.true[m][candidates[torch.cat(best).numpy()]]
            ok[positions] = True
        return pred[torch.from_numpy(ok)], ok
