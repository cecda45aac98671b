"""benchmarks.experiments.side_by_side: weight copying, the aligned one-batch check, the official class in our
engine. Stand-ins play the official classes: a dense, independently written SGL with the
official attribute names and torch.multinomial edge dropping, and a wrapper around our MFBPR
with the official batch layout."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.run.config import expand_grid, resolve
from benchmarks.core.engine import Trainer, seed_everything
from benchmarks.core.protocols import get_protocol, resolve_ratio
from benchmarks.core.sampling import BPRSampler
from benchmarks.experiments.side_by_side import OfficialInEngine, compare_step, copy_weights, main
from data_prep.synthetic import make_replica
from models.registry import get


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def replica():
    return make_replica("tiktok", 0.03)


def build(ds, name, seed=0, **sets):
    entry = get(name)
    cfg = expand_grid(resolve(entry, "tiktok", sets, quick=True), entry.cls.list_params)[0]
    rng = seed_everything(seed)
    task = get_protocol("missing").build_task(ds, cfg, entry.cls, resolve_ratio(ds, cfg.get("missing_ratio")))
    return entry.cls(cfg, task), task, cfg, rng


class DenseSGL(nn.Module):
    """SGL written with dense matrices; edges listed in a shuffled order (not ours)."""

    def __init__(self, task, reg_weight, d=64, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_users, self.n_items = task.n_users, task.n_items
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        with torch.no_grad():
            self.user_embedding.weight.uniform_(-0.1, 0.1, generator=g)
            self.item_id_embedding.weight.uniform_(-0.1, 0.1, generator=g)
        r = task.train_matrix().tocoo()
        perm = torch.randperm(r.nnz, generator=g)
        self.edge_indices = torch.stack([torch.from_numpy(r.row).long(), torch.from_numpy(r.col).long()])[:, perm]
        du = torch.bincount(self.edge_indices[0], minlength=self.n_users).float()
        di = torch.bincount(self.edge_indices[1], minlength=self.n_items).float()
        self.edge_values = 1.0 / torch.sqrt((du[self.edge_indices[0]] + 1e-7) * (di[self.edge_indices[1]] + 1e-7))
        self.reg_weight = reg_weight

    def dense_adj(self, edges):
        n = self.n_users + self.n_items
        r = torch.zeros(self.n_users, self.n_items)
        r[edges[0], edges[1]] = 1.0
        a = torch.zeros(n, n)
        a[:self.n_users, self.n_users:] = r
        a[self.n_users:, :self.n_users] = r.T
        d = (a.sum(1) + 1e-7).pow(-0.5)
        return d[:, None] * a * d[None, :]

    def embed(self, a):
        x = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        layers = [x]
        for _ in range(3):
            layers.append(a @ layers[-1])
        out = torch.stack(layers).mean(0)
        return out[:self.n_users], out[self.n_users:]

    @staticmethod
    def nce(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        pos = torch.exp((a * b).sum(1) / 0.2)
        total = torch.exp(a @ b.T / 0.2).sum(1)
        return -torch.log(pos / (total + 1e-9) + 1e-9).mean()

    def calculate_loss(self, interaction):
        users, pos, neg = interaction
        u, i = self.embed(self.dense_adj(self.edge_indices))
        bpr = -F.logsigmoid((u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1)).mean()
        views = []
        for rate in (0.1, 0.2):
            kept = torch.multinomial(self.edge_values, int(self.edge_indices.shape[1] * (1 - rate)))
            views.append(self.embed(self.dense_adj(self.edge_indices[:, kept])))
        uid, iid = torch.unique(users), torch.unique(torch.cat([pos, neg]))
        cl = self.nce(views[0][0][uid], views[1][0][uid]) + self.nce(views[0][1][iid], views[1][1][iid])
        return bpr + self.reg_weight * cl


def test_sgl_check_gives_equal_losses_and_gradients_with_replayed_edge_drops(replica):
    ours, task, cfg, rng = build(replica, "SGL", reg_weight=0.3)
    official = DenseSGL(task, 0.3)
    users, pos, neg = next(BPRSampler(task, rng).epoch(256))
    out = compare_step("SGL", ours, official, users, pos, neg)
    assert out["loss_ours"] == pytest.approx(out["loss_official"], rel=1e-5)
    assert out["loss_official"] > 0.69  # BPR near log 2 at this init, plus the contrastive term
    for key in ("user_embedding", "item_embedding"):
        g = out["gradients"][key]
        assert g["max_official"] > 0 and g["max_diff"] < 1e-4 * g["max_official"]
        # the yardstick: the official model on weights perturbed by 1e-7 moves a little, not 0, not a lot
        assert 0 < g["official_self"] < 1e-4 * g["max_official"]
    # the weights were copied, and our edge sampling is ours again afterwards
    assert torch.equal(ours.item_embedding, official.item_id_embedding.weight)
    assert ours.dropper.sample(10)._nnz() == 20
    # without the replay, the two sides draw different views and the contrastive terms differ
    torch.manual_seed(5)
    unaligned = ours.calculate_loss(users, pos, neg).item()
    assert unaligned != pytest.approx(out["loss_official"], rel=1e-5)


def test_copy_weights_covers_every_parameter_and_checks_shapes():
    class Ours(nn.Module):
        def __init__(self, n=3):
            super().__init__()
            self.user_embedding = nn.Parameter(torch.zeros(n, 2))
            self.item_embedding = nn.Parameter(torch.zeros(4, 2))

    class Theirs(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding = nn.Embedding(3, 2)
            self.item_id_embedding = nn.Embedding(4, 2)

    ours, theirs = Ours(), Theirs()
    mapping = {"user_embedding": "user_embedding.weight", "item_embedding": "item_id_embedding.weight",
               "raw.a": "audio_embedding.weight"}  # a modality ours lacks is skipped
    assert copy_weights(ours, theirs, mapping) == ["user_embedding", "item_embedding"]
    assert torch.equal(ours.item_embedding, theirs.item_id_embedding.weight)
    with pytest.raises(ValueError, match="no official counterpart mapped for our parameter.*item_embedding"):
        copy_weights(ours, theirs, {"user_embedding": "user_embedding.weight"})
    with pytest.raises(ValueError, match="shape of our 'user_embedding' \\(5, 2\\) differs"):
        copy_weights(Ours(5), theirs, mapping)
    with pytest.raises(ValueError, match="no 'item_embedding.weight'"):
        copy_weights(ours, theirs, {"user_embedding": "user_embedding.weight", "item_embedding": "item_embedding.weight"})


class OfficialLayoutMF(nn.Module):
    """Our MFBPR behind the official interface: batches as one (3, B) tensor, users as a tuple."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.pre_epochs = 0

    def calculate_loss(self, interaction):
        return self.inner.calculate_loss(interaction[0], interaction[1], interaction[2])

    def full_sort_predict(self, interaction):
        return self.inner.full_sort_predict(interaction[0])

    def pre_epoch_processing(self):
        self.pre_epochs += 1


def test_official_class_in_our_engine_trains_exactly_like_the_model_it_wraps(replica):
    ours, task, cfg, rng = build(replica, "MFBPR", seed=7, epochs=3, reg_weight=0.01)
    direct = Trainer(ours, task, cfg, rng).run()
    inner, _, _, rng = build(replica, "MFBPR", seed=7, epochs=3, reg_weight=0.01)
    wrapped = OfficialInEngine(cfg, task, OfficialLayoutMF(inner))
    via = Trainer(wrapped, task, cfg, rng).run()
    assert wrapped.official.pre_epochs == 3
    assert [c["train_loss"] for c in via.curve] == [c["train_loss"] for c in direct.curve]
    assert via.test == direct.test and via.best_epoch == direct.best_epoch
    assert torch.equal(inner.user_embedding, ours.user_embedding)


def test_cli_refusals(tmp_path):
    tiktok = tmp_path / "tiktok"
    tiktok.mkdir()
    (tiktok / "tiktok.inter").write_text("userID\titemID\tx_label\n")
    base = ["--data-dir", str(tiktok)]
    with pytest.raises(SystemExit, match="not a checkout of ptkjw1997/DGMRec or enoche/MMRec"):
        main(["--source", str(tmp_path), "--model", "SGL"] + base)
    release, mmrec = tmp_path / "release", tmp_path / "mmrec"
    (release / "src" / "configs" / "best").mkdir(parents=True)
    (release / "src" / "main.py").write_text("")
    (mmrec / "src").mkdir(parents=True)
    (mmrec / "src" / "main.py").write_text("")
    with pytest.raises(SystemExit, match="nowhere: no such dataset folder"):
        main(["--source", str(release), "--model", "SGL", "--data-dir", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no dgmrec-release weight map for GRCN"):
        main(["--source", str(release), "--model", "GRCN"] + base)
    with pytest.raises(SystemExit, match="no mmrec weight map for SGL .*have: LightGCN"):
        main(["--source", str(mmrec), "--model", "SGL"] + base)
    with pytest.raises(SystemExit, match="MMRec has no new-item mode"):
        main(["--source", str(mmrec), "--model", "LightGCN", "--protocol", "new_items"] + base)
    with pytest.raises(SystemExit, match="--train cannot run DGMRec: the official trainer builds its CLUB"):
        main(["--source", str(release), "--model", "DGMRec", "--train"] + base)
    with pytest.raises(SystemExit, match="--seeds must be comma-separated integers"):
        main(["--source", str(release), "--model", "SGL", "--seeds", "1;2"] + base)


def test_weight_maps_are_keyed_by_code_base_and_cover_the_release_checks():
    from benchmarks.experiments.official_checkout import DGMREC, MMREC
    from benchmarks.experiments.weight_maps import WEIGHTS, per_modality
    release = {m for c, m in WEIGHTS if c == DGMREC}
    assert release == {"MFBPR", "LightGCN", "NGCF", "SGL", "SimGCL", "BM3", "MILK", "SIBRAR", "CI2MG"}
    assert WEIGHTS[(MMREC, "LightGCN")]["user_embedding"] == "embedding_dict.user_emb"
    assert WEIGHTS[(DGMREC, "LightGCN")]["user_embedding"] == "user_embedding.weight"
    assert per_modality("proj.{m}.{p}", "{name}_trs.{p}", ("weight",)) == {
        "proj.v.weight": "image_trs.weight", "proj.t.weight": "text_trs.weight", "proj.a.weight": "audio_trs.weight"}


def test_dropout_rates_are_zeroed_on_both_sides_under_their_own_names(replica):
    """NGCF: our per-layer rates are ``dropout``, the official ones ``mess_dropout``."""
    ours, task, cfg, rng = build(replica, "NGCF")
    official = nn.Module()
    official.mess_dropout = [0.1, 0.1]
    official.user_embedding = nn.Embedding(task.n_users, ours.user_embedding.shape[1])
    official.item_embedding = nn.Embedding(task.n_items, ours.user_embedding.shape[1])
    seen = {}

    def official_loss(interaction):
        seen["rates"] = list(official.mess_dropout)
        return official.user_embedding.weight[interaction[0]].sum() * 0.0
    official.calculate_loss = official_loss
    assert any(p > 0 for p in ours.dropout)
    users, pos, neg = next(BPRSampler(task, rng).epoch(64))
    with pytest.raises(ValueError, match="no 'gc_linears.0.weight'"):
        compare_step("NGCF", ours, official, users, pos, neg)  # no layers yet
    official.gc_linears = nn.ModuleList(nn.Linear(g.in_features, g.out_features) for g in ours.gc)
    official.bi_linears = nn.ModuleList(nn.Linear(b.in_features, b.out_features) for b in ours.bi)
    out = compare_step("NGCF", ours, official, users, pos, neg)
    assert seen["rates"] == [0.0, 0.0] and ours.dropout == [0.0] * len(ours.gc)
    assert np.isfinite(out["loss_ours"])


def test_sibrar_sources_are_the_official_draws_and_sampling_is_restored(replica):
    from benchmarks.experiments.side_by_side import _recording_multinomial, _replayed_source_pairs
    ours, task, cfg, rng = build(replica, "SIBRAR")
    users, pos, neg = next(BPRSampler(task, rng).epoch(128))
    drawn, original = [], torch.multinomial
    with _recording_multinomial(drawn):
        official_pick = torch.multinomial(torch.ones(4).expand(len(pos), -1), 3, replacement=False)
    assert len(drawn) == 1 and torch.equal(drawn[0], official_pick)
    with _replayed_source_pairs(ours, None, drawn):
        k1, k2 = ours.sample_sources(pos)
    assert torch.equal(k1, official_pick[:, 0]) and torch.equal(k2, official_pick[:, 1])
    assert torch.multinomial is original and ours.sample_sources.__func__ is type(ours).sample_sources


@pytest.mark.parametrize("name,sets", [
    ("FREEDOM", {}), ("DRAGON", {}), ("PGL", {}), ("SMORE", {}),
    ("MMGCF", {"fusion_mode": "mean", "weighting": "equal"}), ("MMGCF", {"fusion_mode": "concat", "weighting": "alpha"}),
    ("MMGCF", {"fusion_mode": "concat", "weighting": "equal"}), ("MMGCF", {"fusion_mode": "sum", "weighting": "normalized"})])
def test_mmrec_weight_maps_cover_every_parameter_of_the_later_models(name, sets):
    """MMRec has two modalities: on a two-modality dataset each map names an official tensor for
    every parameter of ours (whatever the fusion layers a setting creates), one tensor each."""
    from benchmarks.experiments.official_checkout import MMREC
    from benchmarks.experiments.weight_maps import WEIGHTS
    ds = make_replica("baby", 0.02)
    entry = get(name)
    cfg = expand_grid(resolve(entry, "baby", sets, quick=True), entry.cls.list_params)[0]
    seed_everything(0)
    task = get_protocol("missing").build_task(ds, cfg, entry.cls, resolve_ratio(ds, 0.0))
    ours = entry.cls(cfg, task)
    mapping = WEIGHTS[(MMREC, name)]
    params = [n for n, _ in ours.named_parameters()]
    assert params and set(params) <= set(mapping)
    targets = [mapping[n] for n in params]
    assert len(set(targets)) == len(targets)
