"""How close the filled rows are to the features they replace: an analysis of every job.

For each modality m and each item whose m is masked, the row the model was given (imputed by
the job's ``missing_imputation``) and, for a model that generates missing features (DGMRec),
the row it generated at the best-validation state are compared with the item's *true* m
feature: cosine similarity and mean squared error per element, averaged over the rows. The
generated rows are also compared with the imputed rows on the same items
(``imputed_on_generated_*``), since DGMRec generates only some masked rows (by default the
items missing exactly that modality).

As in the retrieval analysis, the true features exist only inside this object, built by the
protocol from the raw dataset after the task; the model never receives them. The captured
generated features also serve the ``generated`` imputation of other models
(``benchmarks.run.jobs`` saves them beside the record).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def row_quality(filled: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(mean cosine, mean squared error per element) of paired rows; a zero row has cosine 0."""
    if len(filled) == 0:
        return float("nan"), float("nan")
    filled, truth = filled.double(), truth.double()
    cos = (F.normalize(filled, dim=1) * F.normalize(truth, dim=1)).sum(dim=1)
    mse = ((filled - truth) ** 2).mean(dim=1)
    return float(cos.mean()), float(mse.mean())


class FeatureQualityAnalysis:
    name = "feature_quality"

    def __init__(self, true_features: dict[str, np.ndarray], task, model_cls):
        # only the masked rows are kept: the true ones and the ones the model was given
        self.rows = {m: np.flatnonzero(np.asarray(task.missing[m], dtype=bool)) for m in task.features}
        self.true = {m: torch.from_numpy(np.asarray(true_features[m][r], dtype=np.float32)) for m, r in self.rows.items()}
        self.filled = {m: task.features[m].detach()[torch.from_numpy(r).to(task.features[m].device)].to(
            "cpu", torch.float32).clone() for m, r in self.rows.items()}
        self.generates = callable(getattr(model_cls, "generated_features", None))

    def capture(self, model) -> dict:
        if not self.generates:
            return {"generated": None}
        with torch.no_grad():
            out = model.generated_features()
        return {"generated": {m: (np.asarray(ids, dtype=np.int64),
                                  torch.as_tensor(f).detach().to("cpu", torch.float32).clone())
                              for m, (ids, f) in out.items()}}

    def finalize(self, captured: dict) -> dict:
        out: dict[str, float] = {}
        for m, truth in self.true.items():
            if len(truth) == 0:
                continue
            cos, mse = row_quality(self.filled[m], truth)
            out.update({f"imputed_{m}_cosine": cos, f"imputed_{m}_mse": mse, f"imputed_{m}_rows": int(len(truth))})
        for m, (ids, feats) in (captured.get("generated") or {}).items():
            if len(ids) == 0 or m not in self.true:
                continue
            pos = np.searchsorted(self.rows[m], ids)
            if (pos >= len(self.rows[m])).any() or not np.array_equal(self.rows[m][np.minimum(pos, len(self.rows[m]) - 1)], ids):
                raise ValueError(f"generated features of modality {m!r} cover items that are not masked")
            idx = torch.from_numpy(pos)
            cos, mse = row_quality(feats, self.true[m][idx])
            base_cos, base_mse = row_quality(self.filled[m][idx], self.true[m][idx])
            out.update({f"generated_{m}_cosine": cos, f"generated_{m}_mse": mse, f"generated_{m}_rows": int(len(ids)),
                        f"imputed_on_generated_{m}_cosine": base_cos, f"imputed_on_generated_{m}_mse": base_mse})
        return out
