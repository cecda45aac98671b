"""How an official model corresponds to ours: weight names, setting names, model names.

Every table is keyed by (code base, official model name); the code bases are
``official_checkout.DGMREC`` (the DGMRec release) and ``official_checkout.MMREC``.

* ``WEIGHTS``: our ``state_dict`` key -> the official class's ``state_dict`` key (buffers such as
  batch-norm statistics included). The one-batch check of ``side_by_side`` copies the official
  initial weights into ours through it; every parameter of ours must be covered.
* ``NO_DROPOUT``: dropout rates set to 0 for the one-batch check, (ours, official) attribute
  names: the two sides draw their masks differently, so the draws cannot be aligned.
* ``SETTING_NAMES``: official setting name -> ours, where they differ; ``official_settings``
  pins an official grid key to our value through it.
* ``OUR_NAMES``: the name of our model where it differs from the official class's.

Adding a model: one ``WEIGHTS`` entry (a dict literal, or built with ``per_modality``), and
where needed a ``NO_DROPOUT``/``SETTING_NAMES``/``OUR_NAMES`` entry.
"""
from __future__ import annotations

from benchmarks.experiments.official_checkout import DGMREC, MMREC

_NAMES = (("v", "image"), ("t", "text"), ("a", "audio"))  # our modality key, the official attribute prefix


def per_modality(ours: str, theirs: str, params=("weight", "bias")) -> dict[str, str]:
    """Map entries for every modality, e.g. ``("proj.{m}.{p}", "{name}_trs.{p}")``; ``params``
    fills ``{p}`` (ignored when the pattern has none). Entries of a modality the dataset does
    not have are skipped when the weights are copied."""
    return {ours.format(m=m, p=p): theirs.format(name=name, p=p) for m, name in _NAMES for p in params}


_EMBEDDINGS = {"user_embedding": "user_embedding.weight", "item_embedding": "item_embedding.weight"}
_ID_EMBEDDINGS = {"user_embedding": "user_embedding.weight", "item_embedding": "item_id_embedding.weight"}
_BM3 = dict(_ID_EMBEDDINGS, **{"predictor.weight": "predictor.weight", "predictor.bias": "predictor.bias"},
            **per_modality("raw.{m}", "{name}_embedding.weight"), **per_modality("trs.{m}.{p}", "{name}_trs.{p}"))
_NGCF = dict(_EMBEDDINGS, **{f"{ours}.{k}.{p}": f"{theirs}.{k}.{p}" for ours, theirs in (("gc", "gc_linears"),
                                                                                       ("bi", "bi_linears"))
                              for k in range(4) for p in ("weight", "bias")})
_MODALITY_INPUTS = dict(per_modality("features.{m}", "{name}_embedding.weight"),
                        **per_modality("proj.{m}.{p}", "{name}_trs.{p}"))
_MILK = {"user_embedding": "user_embedding.weight", **_MODALITY_INPUTS}
_SIBRAR = dict(_ID_EMBEDDINGS, **{k: k for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")},
               **_MODALITY_INPUTS)
_CI2MG = dict(_ID_EMBEDDINGS, **per_modality("proj.{m}.{p}", "{name}_trs.{p}"),
              **per_modality("prototypes.{m}", "{name}_prot.weight"),
              **per_modality("hyper.{m}.weight", "hgcn_weight_{name}.weight"),
              **per_modality("enhance.{m}.{p}", "{name}_enhance.{p}"),
              **{f"bn.{k}": f"bn.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
_FREEDOM = dict(_ID_EMBEDDINGS, **per_modality("features.{m}", "{name}_embedding.weight"),
                **per_modality("trs.{m}.{p}", "{name}_trs.{p}"))

# MMRec's DRAGON names its per-modality graph networks by modality code (v_gcn, t_gcn; no audio)
_DRAGON = {"weight_u": "weight_u", **{f"preference.{m}": f"{m}_gcn.preference" for m in ("v", "t")},
           **{f"{ours}.{m}.{p}": f"{m}_gcn.{theirs}.{p}" for m in ("v", "t")
              for ours, theirs in (("mlp_in", "MLP"), ("mlp_out", "MLP_1")) for p in ("weight", "bias")}}

# SMORE's queries and gates are named by a letter (v, t; f for the fusion), its preference gates
# and filters by the modality's name
_SMORE = dict(_ID_EMBEDDINGS, **per_modality("features.{m}", "{name}_embedding.weight"),
              **per_modality("trs.{m}.{p}", "{name}_trs.{p}"),
              **{f"query.{m}.{k}": f"query_{m}.{k}" for m in "vt" for k in ("0.weight", "0.bias", "2.weight")},
              **{f"gate.{m}.0.{p}": f"gate_{m}.0.{p}" for m in "vt" for p in ("weight", "bias")},
              **{f"gate_fusion.0.{p}": f"gate_f.0.{p}" for p in ("weight", "bias")},
              **per_modality("prefer.{m}.0.{p}", "gate_{name}_prefer.0.{p}"),
              **{f"prefer_fusion.0.{p}": f"gate_fusion_prefer.0.{p}" for p in ("weight", "bias")},
              **per_modality("filters.{m}", "{name}_complex_weight"),
              fusion_filter="fusion_complex_weight")

WEIGHTS: dict[tuple[str, str], dict[str, str]] = {
    (DGMREC, "MFBPR"): _EMBEDDINGS, (DGMREC, "LightGCN"): _EMBEDDINGS, (DGMREC, "NGCF"): _NGCF,
    (DGMREC, "SGL"): _ID_EMBEDDINGS, (DGMREC, "SimGCL"): _ID_EMBEDDINGS, (DGMREC, "BM3"): _BM3,
    (DGMREC, "MILK"): _MILK, (DGMREC, "SIBRAR"): _SIBRAR, (DGMREC, "CI2MG"): _CI2MG,
    # MMRec keeps LightGCN's two tables in a ParameterDict
    (MMREC, "LightGCN"): {"user_embedding": "embedding_dict.user_emb", "item_embedding": "embedding_dict.item_emb"},
    (MMREC, "FREEDOM"): _FREEDOM,
    (MMREC, "DRAGON"): _DRAGON,
    (MMREC, "SMORE"): _SMORE,
    # PGL: one user table per modality (user_image, user_text), trainable features and projections
    (MMREC, "PGL"): dict(per_modality("user_embedding.{m}", "user_{name}.weight"), **_MODALITY_INPUTS),
    # MMGCF: the fusion layers exist only for the fusion mode and weighting that use them
    (MMREC, "MMGCF"): dict(_ID_EMBEDDINGS, mm_alpha="mm_alpha", **per_modality("trs.{m}.{p}", "{name}_trs.{p}"),
                           **{f"{ours}.{p}": f"{ours}_layer.{p}" for ours in ("mm_concat", "id_mm_concat", "all_concat")
                              for p in ("weight", "bias")}),
}

NO_DROPOUT: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    (DGMREC, "BM3"): (("dropout",), ("dropout",)), (DGMREC, "NGCF"): (("dropout",), ("mess_dropout",)),
}

SETTING_NAMES: dict[tuple[str, str], dict[str, str]] = {
    (MMREC, "LightGCN"): {"n_layers": "n_ui_layers"},
}

OUR_NAMES: dict[tuple[str, str], str] = {
    (MMREC, "BPR"): "MFBPR",
}


def our_name(codebase: str, model: str) -> str:
    return OUR_NAMES.get((codebase, model), model)
