"""Training losses of ItemPop, MFBPR, NGCF, LightGCN, SGL, SimGCL, VBPR, MMGCN, GRCN, SLMRec and BM3
against independent dense oracles.

Each model is built from its registered class and configuration (sizes overridden) on a hand-made
task of 6 users and 10 items. Its ``calculate_loss`` on one fixed batch (with repeated users and
items) is compared with the loss written out below as plain float64 algebra on dense matrices,
reading the model's parameters through ``state_dict()`` by key; where cheap, the gradients of the
ID tables are compared too. A change of any loss term (a dropped term, a flipped sign, a
regulariser moved onto propagated embeddings, a weight or temperature ignored) moves the loss
well beyond the tolerance.

Randomness: SGL's edge dropping, SimGCL's noise, NGCF's message dropout and BM3's target dropout
are switched off through their configuration keys (drop rates 0, eps 0, dropout 0); what stays is
deterministic and still checked (SGL and SimGCL keep their contrastive term between two equal
views). SimGCL's noise is also checked with eps > 0 by reseeding the generator identically before
the model and the oracle draw it.
"""
from collections import Counter

import numpy as np
import pytest
import torch

from benchmarks.core.protocols import impute_features
from benchmarks.run.config import expand_grid, resolve
from data_prep.masks import per_modality_missing
from data_prep.modalities import Modalities
from models import registry
from models.task import EvalSet, Task

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------- the hand-made task

N_USERS, N_ITEMS = 6, 10
TRAIN = [(0, 0), (0, 1), (0, 4), (0, 5), (1, 1), (1, 2), (1, 8), (2, 0), (2, 3), (2, 7), (3, 4), (3, 5),
         (3, 9), (4, 2), (4, 6), (4, 7), (5, 3), (5, 6), (5, 8), (5, 9)]
NEW = (8, 9)  # new items under the new-item protocol: their training rows are held out
DIMS = {"v": 6, "t": 5, "a": 4}
# 2 modalities: items 2, 7 miss text, 5 misses the image, 9 misses both.
# 3 modalities: 2 misses text, 5 the image, 3 audio, 7 text and image, 9 everything.
GROUPS = {2: {"t": [2, 7], "v": [5], "all": [9]},
          3: {"t": [2], "v": [5], "a": [3], "tv": [7], "ta": [], "va": [], "all": [9]}}
# One batch of BPR triples: users 0 and 2 and items 2 and 5 repeat; the positives include items
# missing each modality; no negative is a training item of its user, and none is new.
USERS = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2])
POS = torch.tensor([1, 2, 7, 5, 2, 3, 5, 0])
NEG = torch.tensor([6, 3, 4, 0, 1, 7, 2, 6])
BATCH = (USERS, POS, NEG)


def hand_task(n_mod: int = 2, new_items: bool = False, masked: bool = True) -> Task:
    """The task a protocol would hand a model: masked feature rows replaced by the mean of the
    observed rows (new items left out of the mean), new items without training rows."""
    mods = ("v", "t", "a")[:n_mod]
    groups = {k: np.array(v, dtype=np.int64) for k, v in GROUPS[n_mod].items()} if masked else \
        {k: np.array([], dtype=np.int64) for k in GROUPS[n_mod]}
    missing = per_modality_missing(groups, mods, N_ITEMS)
    new = np.zeros(N_ITEMS, dtype=bool)
    if new_items:
        new[list(NEW)] = True
    rng = np.random.default_rng(7)
    features = {m: torch.from_numpy(impute_features(rng.normal(size=(N_ITEMS, DIMS[m])).astype(np.float32),
                                                    missing[m], "mean", exclude=new)) for m in mods}
    pairs = [(u, i) for u, i in TRAIN if not new[i]]
    ev = EvalSet.from_pairs("valid", np.array([0, 1]), np.array([3, 0]))
    return Task(dataset="baby" if n_mod == 2 else "tiktok", n_users=N_USERS, n_items=N_ITEMS,
                train_users=np.array([p[0] for p in pairs]), train_items=np.array([p[1] for p in pairs]),
                features=features, modalities=Modalities(mods), missing=missing, mask_groups=groups, new_items=new,
                valid=ev, test=ev)


def build(name: str, task: Task, seed: int = 0, **sets):
    """The registered model with its registered configuration for the task's dataset kind, ``sets``
    applied (each must name a key the configuration has, or it would be ignored) and the first
    setting of any remaining grid."""
    entry = registry.get(name)
    cfg = resolve(entry, task.dataset, {})
    assert set(sets) <= set(cfg), f"unknown keys {set(sets) - set(cfg)}"
    cfg = expand_grid(resolve(entry, task.dataset, sets), entry.cls.list_params)[0]
    torch.manual_seed(seed)
    return entry.cls(cfg, task)


# --------------------------------------------------------------------------- plain float64 algebra

def params_of(model, grads=()) -> dict:
    """Float64 copies of the model's state by key; those named in ``grads`` track gradients."""
    p = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
    for k in grads:
        p[k].requires_grad_(True)
    return p


def interactions(task) -> torch.Tensor:
    r = torch.zeros(task.n_users, task.n_items, dtype=torch.float64)
    r[torch.from_numpy(task.train_users), torch.from_numpy(task.train_items)] = 1.0
    return r


def joint(r: torch.Tensor) -> torch.Tensor:
    """[[0, R], [Rᵀ, 0]]."""
    u, i = r.shape
    a = torch.zeros(u + i, u + i, dtype=torch.float64)
    a[:u, u:], a[u:, :u] = r, r.T
    return a


def sym_norm_adj(task) -> torch.Tensor:
    """D^-1/2 A D^-1/2 with D the degrees + 1e-7 (isolated nodes get an empty row)."""
    a = joint(interactions(task))
    d = (a.sum(1) + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :]


def mean_adj(task) -> torch.Tensor:
    """Row r averages the neighbours of node r (an empty row for a node without neighbours)."""
    a = joint(interactions(task))
    deg = a.sum(1, keepdim=True)
    return a / torch.where(deg > 0, deg, torch.ones_like(deg))


def layer_mean(adj, e0, n_layers, first=0):
    """Mean of Â^l E0 for l = first .. n_layers."""
    layers = [e0]
    for _ in range(n_layers):
        layers.append(adj @ layers[-1])
    return torch.stack(layers[first:]).mean(0)


def lin(x, p, prefix):
    return x @ p[f"{prefix}.weight"].T + p[f"{prefix}.bias"]


def unit(x):
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def lrelu(x, slope=0.01):
    return torch.where(x > 0, x, slope * x)


def bpr(u, p, n, gamma=0.0):
    """mean of -log(γ + σ(u·p - u·n))."""
    return -torch.log(gamma + torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()


def frobenius_per_row(*mats):
    """Σ ‖M‖_F (not squared) divided by the row count of the last matrix."""
    return sum(m.norm() for m in mats) / mats[-1].shape[0]


def nce_eps(a, b, tau, eps=1e-9):
    """-mean_i log( exp(â_i·b̂_i/τ) / (Σ_j exp(â_i·b̂_j/τ) + eps) + eps ) over unit rows."""
    e = torch.exp(unit(a) @ unit(b).T / tau)
    return -torch.log(e.diagonal() / (e.sum(1) + eps) + eps).mean()


def cross_entropy_diag(logits, rows=None):
    """Cross-entropy of each selected row of ``logits`` against its diagonal entry (all columns)."""
    loss = torch.logsumexp(logits, 1) - logits.diagonal()
    return loss.mean() if rows is None else loss[torch.as_tensor(rows)].mean()


def cos(a, b):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def compare(model, oracle, grads=(), batch=BATCH):
    """``model.calculate_loss(batch)`` against ``oracle(params)``, and the gradients of ``grads``."""
    p = params_of(model, grads)
    want = oracle(p)
    model.zero_grad()
    got = model.calculate_loss(*batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    if grads:
        want.backward()
        got.backward()
        named = dict(model.named_parameters())
        for k in grads:
            assert named[k].grad is not None, k
            torch.testing.assert_close(named[k].grad.double(), p[k].grad, rtol=1e-4, atol=1e-6, msg=k)
    return got.item()


ID = ("user_embedding", "item_embedding")

# --------------------------------------------------------------------------- ItemPop


@pytest.mark.parametrize("new_items", [False, True])
def test_itempop_ranks_items_by_training_count(new_items):
    task = hand_task(new_items=new_items)
    model = build("ItemPop", task)
    assert not model.trainable and not list(model.parameters())
    counts = Counter(i for _, i in TRAIN if not (new_items and i in NEW))
    expected = sorted(range(N_ITEMS), key=lambda i: (-counts[i], i))  # most trained first, ties by id
    scores = model.full_sort_predict(torch.tensor([0, 3, 5]))
    assert scores.shape == (3, N_ITEMS) and torch.equal(scores[0], scores[2])  # the same list for everybody
    assert torch.argsort(-scores[0], stable=True).tolist() == expected
    assert len(set(scores[0].tolist())) == N_ITEMS  # strictly ordered: no tie is left to topk
    if new_items:
        assert sorted(expected[-2:]) == list(NEW)  # untrained new items come last
    with pytest.raises(RuntimeError):
        model.calculate_loss(*BATCH)


# --------------------------------------------------------------------------- collaborative models

@pytest.mark.parametrize("new_items", [False, True])
def test_mfbpr_loss(new_items):
    task = hand_task(new_items=new_items)
    model = build("MFBPR", task, embedding_size=4, reg_weight=0.5)

    def oracle(p):
        u, p_, n = p["user_embedding"][USERS], p["item_embedding"][POS], p["item_embedding"][NEG]
        return bpr(u, p_, n, gamma=1e-10) + 0.5 * frobenius_per_row(u, p_, n)

    compare(model, oracle, ID)


@pytest.mark.parametrize("new_items", [False, True])
@pytest.mark.parametrize("reg_weight", [0.0, 0.5])
def test_lightgcn_loss_regularises_the_layer0_embeddings(reg_weight, new_items):
    """BPR on the propagated (layer-mean) vectors; the norm regulariser on the ID tables themselves."""
    task = hand_task(new_items=new_items)
    model = build("LightGCN", task, embedding_size=4, n_ui_layers=2, reg_weight=reg_weight)
    adj = sym_norm_adj(task)

    def oracle(p):
        e0 = torch.cat([p["user_embedding"], p["item_embedding"]])
        e = layer_mean(adj, e0, 2)
        u, i = e[:N_USERS], e[N_USERS:]
        rank = bpr(u[USERS], i[POS], i[NEG], gamma=1e-10 if reg_weight else 0.0)
        return rank + reg_weight * frobenius_per_row(p["user_embedding"][USERS], p["item_embedding"][POS],
                                                     p["item_embedding"][NEG])

    compare(model, oracle, ID)


@pytest.mark.parametrize("new_items", [False, True])
def test_ngcf_loss(new_items):
    """Message dropout off (mess_dropout 0). Layer k: E ← lrelu_0.2(W₁(ÂE + E) + W₂(E ⊙ ÂE)), one
    LeakyReLU over both messages as the reference; the vector is [E0, unit(E1), unit(E2)]; the
    regulariser acts on those final vectors."""
    task = hand_task(new_items=new_items)
    model = build("NGCF", task, embedding_size=4, weight_size=[5, 3], mess_dropout=[0.0, 0.0], reg_weight=0.5)
    adj = sym_norm_adj(task)

    def oracle(p):
        e = torch.cat([p["user_embedding"], p["item_embedding"]])
        out = [e]
        for k in range(2):
            side = adj @ e
            e = lrelu(lin(side + e, p, f"gc.{k}") + lin(e * side, p, f"bi.{k}"), 0.2)
            out.append(unit(e))
        final = torch.cat(out, 1)
        u, i = final[:N_USERS], final[N_USERS:]
        return bpr(u[USERS], i[POS], i[NEG], gamma=1e-10) + 0.5 * frobenius_per_row(u[USERS], i[POS], i[NEG])

    compare(model, oracle, ID)


@pytest.mark.parametrize("new_items", [False, True])
def test_sgl_loss_with_undropped_views(new_items):
    """Drop rates 0: both views keep every edge, so each equals the full LightGCN propagation and
    the contrastive term is InfoNCE (eps form) of that propagation against itself, over the
    distinct batch users plus over the distinct positive and negative items."""
    task = hand_task(new_items=new_items)
    model = build("SGL", task, embedding_size=4, n_ui_layers=2, reg_weight=0.5, temperature=0.3,
                  drop_rate_1=0.0, drop_rate_2=0.0)
    adj = sym_norm_adj(task)
    uid, iid = torch.unique(USERS), torch.unique(torch.cat([POS, NEG]))

    def oracle(p):
        e = layer_mean(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), 2)
        u, i = e[:N_USERS], e[N_USERS:]
        cl = nce_eps(u[uid], u[uid], 0.3) + nce_eps(i[iid], i[iid], 0.3)
        return bpr(u[USERS], i[POS], i[NEG]) + 0.5 * cl

    compare(model, oracle, ID)


@pytest.mark.parametrize("skip_layer0", [False, True])
@pytest.mark.parametrize("new_items", [False, True])
def test_simgcl_loss_without_noise(new_items, skip_layer0):
    """eps 0: each perturbed view is the mean of the propagated layers, layer 0 included
    (reference) or not (fix_perturbed_layer0); BPR uses the clean mean over layers 0..L."""
    task = hand_task(new_items=new_items)
    model = build("SimGCL", task, embedding_size=4, n_ui_layers=2, reg_weight=0.5, temperature=0.3, eps=0.0,
                  fix_perturbed_layer0=skip_layer0)
    adj = sym_norm_adj(task)
    uid, iid = torch.unique(USERS), torch.unique(torch.cat([POS, NEG]))

    def oracle(p):
        e0 = torch.cat([p["user_embedding"], p["item_embedding"]])
        clean, view = layer_mean(adj, e0, 2), layer_mean(adj, e0, 2, first=1 if skip_layer0 else 0)
        u, i = clean[:N_USERS], clean[N_USERS:]
        vu, vi = view[:N_USERS], view[N_USERS:]
        return bpr(u[USERS], i[POS], i[NEG]) + 0.5 * (nce_eps(vu[uid], vu[uid], 0.3) + nce_eps(vi[iid], vi[iid], 0.3))

    compare(model, oracle, ID)


def test_simgcl_noise_is_sign_aligned_and_added_after_every_layer():
    """eps > 0, the generator reseeded identically before the model and before the oracle: each
    view draws, after each propagation, U[0,1) of the embedding's shape, scales its unit rows by eps,
    gives them the sign of the propagated values and adds them before the next layer; view 1's
    layers draw first, then view 2's."""
    task = hand_task()
    eps, layers = 0.3, 2
    model = build("SimGCL", task, embedding_size=4, n_ui_layers=layers, reg_weight=2.0, temperature=0.3, eps=eps)
    adj = sym_norm_adj(task)
    uid, iid = torch.unique(USERS), torch.unique(torch.cat([POS, NEG]))
    p = params_of(model)
    e0 = torch.cat([p["user_embedding"], p["item_embedding"]])

    def view():
        e, total = e0, e0
        for _ in range(layers):
            e = adj @ e
            e = e + torch.sign(e) * eps * unit(torch.rand(e.shape).double())
            total = total + e
        return total / (layers + 1)

    torch.manual_seed(5)
    v1, v2 = view(), view()
    clean = layer_mean(adj, e0, layers)
    u, i = clean[:N_USERS], clean[N_USERS:]
    want = bpr(u[USERS], i[POS], i[NEG]) + 2.0 * (nce_eps(v1[:N_USERS][uid], v2[:N_USERS][uid], 0.3) +
                                                 nce_eps(v1[N_USERS:][iid], v2[N_USERS:][iid], 0.3))
    torch.manual_seed(5)
    assert model.calculate_loss(*BATCH).item() == pytest.approx(want.item(), rel=1e-5)


# --------------------------------------------------------------------------- multi-modal models

SETTINGS = [(n_mod, new_items) for n_mod in (2, 3) for new_items in (False, True)]


@pytest.mark.parametrize("fix_text_only", [False, True])
@pytest.mark.parametrize("n_mod,new_items", SETTINGS)
def test_vbpr_loss(n_mod, new_items, fix_text_only):
    """Item vector [ID factors | W·content + b], content = the text features (reference) or text
    followed by the other modalities (fix_text_only); BPR plus the norm regulariser on the batch's
    user and item vectors."""
    task = hand_task(n_mod, new_items)
    model = build("VBPR", task, embedding_size=3, reg_weight=0.5, fix_text_only=fix_text_only)
    order = ["t"] + [m for m in task.modalities if m != "t"] if fix_text_only else ["t"]
    content = torch.cat([task.features[m].double() for m in order], 1)

    def oracle(p):
        items = torch.cat([p["item_factors"], lin(content, p, "projection")], 1)
        u, i_p, i_n = p["user_factors"][USERS], items[POS], items[NEG]
        return bpr(u, i_p, i_n) + 0.5 * frobenius_per_row(u, i_p, i_n)

    compare(model, oracle, ("user_factors", "item_factors", "projection.weight"))


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("n_mod,new_items", SETTINGS)
def test_mmgcn_loss(n_mod, new_items, trainable):
    """Per modality: x = unit rows of [P_m; content] (the image through its 256-wide MLP), then three
    layers of h = lrelu(graph conv of x), x̂ = lrelu(Lin(x)) + E_id, x = lrelu(G[h, x̂]). The graph
    conv averages x_j W + b over the neighbours and takes unit rows on 2-modality data; on
    3-modality data it averages x_j W (no bias, no normalisation). Vectors: the mean over
    modalities. Loss: -log σ(s⁺ - s⁻) + λ (mean of E_id² over the interleaved (user, item) rows
    + Σ_m mean P_m²)."""
    task = hand_task(n_mod, new_items)
    model = build("MMGCN", task, embedding_size=4, reg_weight=0.5, fix_untrained_embeddings=trainable)
    adj = mean_adj(task)
    two = n_mod == 2

    def branch(p, m, e_id):
        b = f"branches.{m}"
        feat = task.features[m].double()
        content = lin(feat, p, f"{b}.mlp") if m == "v" else feat
        x = unit(torch.cat([p[f"{b}.preference"], content]))
        for k in range(3):
            msg = x @ p[f"{b}.conv_w.{k}"] + (p[f"{b}.conv_b.{k}"] if two else 0.0)
            conv = adj @ msg
            h = lrelu(unit(conv) if two else conv)
            x_hat = lrelu(lin(x, p, f"{b}.lin.{k}")) + e_id
            x = lrelu(lin(torch.cat([h, x_hat], 1), p, f"{b}.gate.{k}"))
        return x

    def oracle(p):
        e_id = p["id_embedding"]
        rep = torch.stack([branch(p, m, e_id) for m in task.modalities]).mean(0)
        u, i = rep[:N_USERS], rep[N_USERS:]
        rank = -torch.log(torch.sigmoid((u[USERS] * i[POS]).sum(1) - (u[USERS] * i[NEG]).sum(1))).mean()
        user_rows = USERS.repeat_interleave(2)
        item_rows = torch.stack([POS, NEG], 1).reshape(-1) + N_USERS
        reg = (e_id[user_rows] ** 2 + e_id[item_rows] ** 2).mean()
        reg = reg + sum((p[f"branches.{m}.preference"] ** 2).mean() for m in task.modalities)
        return rank + 0.5 * reg

    compare(model, oracle, ("id_embedding", "branches.t.preference") if trainable else ())


def _masked_softmax(logits, mask, dim):
    """Softmax over the entries where ``mask`` is 1 along ``dim``; 0 elsewhere and in empty slices."""
    e = torch.exp(logits - logits.max()) * mask
    s = e.sum(dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


@pytest.mark.parametrize("routing", [False, True])
@pytest.mark.parametrize("n_mod,new_items", SETTINGS)
def test_grcn_loss(n_mod, new_items, routing):
    """Per modality (order v, a, t): F = unit(lrelu(MLP(X))), P = unit(P_m) (refined by n_layers
    routing steps P ← unit(P + αF) with fix_routing); attention α = softmax of ⟨P_u, F_i⟩ over each
    item's users (user → item) and over each user's items (item → user); rep = [P + α_user F;
    F + α_itemᵀ P]. ID graph: edge u→i weighs relu(max_m α_item,m · C[u, m]), edge i→u
    relu(max_m α_user,m · C[U+i, m]); id_rep = x + Wx + W(Wx), x = unit(E_id). Vector
    [id_rep, rep_v, (rep_a), rep_t]; loss -log σ(s⁺ - s⁻) + λ (mean E_id² over the interleaved
    rows + mean P_v² + Σ_m mean P_m[batch users]²)."""
    task = hand_task(n_mod, new_items)
    model = build("GRCN", task, embedding_size=4, latent_embedding=3, n_layers=2, reg_weight=0.5,
                  fix_routing=routing)
    r = interactions(task)
    order = [m for m in ("v", "a", "t") if m in task.modalities]

    def oracle(p):
        reps, a_items, a_users = [], [], []
        for m in order:
            f = unit(lrelu(lin(task.features[m].double(), p, f"mlp.{m}")))
            pref = unit(p[f"preference.{m}"])
            if routing:
                for _ in range(2):
                    pref = unit(pref + _masked_softmax(pref @ f.T, r, 1) @ f)
            logits = pref @ f.T                               # ⟨P_u, F_i⟩ on every (u, i)
            a_item = _masked_softmax(logits, r, 0)             # over the users of each item
            a_user = _masked_softmax(logits, r, 1)             # over the items of each user
            reps.append(torch.cat([pref + a_user @ f, f + a_item.T @ pref]))
            a_items.append(a_item)
            a_users.append(a_user)
        conf = p["confidence"]
        w_item = torch.relu(torch.stack([a * conf[:N_USERS, k, None] for k, a in enumerate(a_items)]).amax(0))
        w_user = torch.relu(torch.stack([a * conf[None, N_USERS:, k] for k, a in enumerate(a_users)]).amax(0))
        w_item, w_user = w_item * r, w_user * r
        x0 = unit(p["id_embedding"])
        layers = [x0]
        for _ in range(2):
            x = layers[-1]
            layers.append(torch.cat([w_user @ x[N_USERS:], w_item.T @ x[:N_USERS]]))
        rep = torch.cat([sum(layers)] + reps, 1)
        u, i = rep[:N_USERS], rep[N_USERS:]
        rank = -torch.log(torch.sigmoid((u[USERS] * i[POS]).sum(1) - (u[USERS] * i[NEG]).sum(1))).mean()
        e = p["id_embedding"]
        user_rows = USERS.repeat_interleave(2)
        item_rows = torch.stack([POS, NEG], 1).reshape(-1) + N_USERS
        reg = (e[user_rows] ** 2 + e[item_rows] ** 2).mean() + (p["preference.v"] ** 2).mean()
        reg = reg + sum((p[f"preference.{m}"][user_rows] ** 2).mean() for m in order)
        return rank + 0.5 * reg

    compare(model, oracle, ("id_embedding", "confidence", "preference.v"))


@pytest.mark.parametrize("fix_mask", [False, True])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("n_mod,new_items", SETTINGS)
def test_slmrec_loss(n_mod, new_items, masked, fix_mask):
    """Views id, v, t(, a): LightGCN of [E_u; E_i] and of [E_u; Lin_m(unit(X_m))]; user and item
    vectors: one linear layer over the concatenated views. Loss: in-batch cross-entropy of
    unit(user)·unit(positive)/temp against the diagonal, plus ssl_alpha × FAC: cross-entropy of
    g(id)·g(v)/ssl_temp and, one level coarser, of g(g(g(id)))·g(t)/ssl_temp, each over the batch
    rows chosen by the mask rule: without masked items every row; the reference uses the rows whose
    item MISSES the modality on 2-modality data and every row on 3-modality data; fix_fac_mask the
    rows whose item HAS it."""
    task = hand_task(n_mod, new_items, masked)
    model = build("SLMRec", task, embedding_size=4, layer_num=2, temp=0.3, ssl_temp=0.7, ssl_alpha=0.5,
                  fix_fac_mask=fix_mask)
    adj = sym_norm_adj(task)
    order = [m for m in ("v", "t", "a") if m in task.modalities]

    def rows(m):
        miss = torch.from_numpy(task.missing[m])[POS]
        if not masked:
            return None
        if fix_mask:
            return ~miss
        return miss if n_mod == 2 else None

    def oracle(p):
        items = {"id": p["item_embedding"]}
        for m in order:
            items[m] = lin(unit(task.features[m].double()), p, f"dense.{m}")
        views = {k: layer_mean(adj, torch.cat([p["user_embedding"], x]), 2) for k, x in items.items()}
        fused = torch.cat([views[k] for k in ["id"] + order], 1)
        user = lin(fused[:N_USERS], p, "user_fusion")
        item = lin(fused[N_USERS:], p, "item_fusion")
        main = cross_entropy_diag(unit(user[USERS]) @ unit(item[POS]).T / 0.3)
        a = lin(views["id"][N_USERS:][POS], p, "g_i_iv")
        b_v = lin(views["v"][N_USERS:][POS], p, "g_v_iv")
        c = lin(lin(a, p, "g_iv_iva"), p, "g_iva_ivat")
        b_t = lin(views["t"][N_USERS:][POS], p, "g_t_ivat")
        fac = cross_entropy_diag(a @ b_v.T / 0.7, rows("v")) + cross_entropy_diag(c @ b_t.T / 0.7, rows("t"))
        return main + 0.5 * fac

    if masked and n_mod == 2:  # both selections are proper subsets here, so the rule matters
        assert all(0 < int(torch.from_numpy(task.missing[m])[POS].sum()) < len(POS) for m in ("v", "t"))
    compare(model, oracle, ID)


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("n_mod,new_items", SETTINGS)
def test_bm3_loss(n_mod, new_items, masked):
    """Target dropout off (dropout 0), so each stop-gradient target is its online vector. Online:
    u = LightGCN users, i = LightGCN items + E_i, f_m = T_m(Φ_m) (zeroed for items missing m on
    2-modality data). Loss: (1 - cos(Pr u, i)) + (1 - cos(Pr i, u)) over the batch's (user,
    positive) pairs + reg_weight (‖u_all‖ + ‖i_all‖)/n_items + cl_weight Σ_m [(1 - cos(Pr f_m, i))
    + (1 - cos(Pr f_m, f_m))]; negatives are not used; cos values are batch means; targets carry no
    gradient."""
    task = hand_task(n_mod, new_items, masked)
    model = build("BM3", task, embedding_size=4, n_layers=2, dropout=0.0, reg_weight=0.5, cl_weight=0.7)
    adj = sym_norm_adj(task)
    p0 = params_of(model)
    if new_items:  # new items start with zero ID rows
        assert (p0["item_embedding"][list(NEW)] == 0).all() and (p0["item_embedding"][:8] != 0).any()
    order = [m for m in ("v", "t", "a") if m in task.modalities]

    def oracle(p):
        e = layer_mean(adj, torch.cat([p["user_embedding"], p["item_embedding"]]), 2)
        u_on, i_on = e[:N_USERS], e[N_USERS:] + p["item_embedding"]
        u_tg, i_tg = u_on.detach(), i_on.detach()
        loss = (1 - cos(lin(u_on[USERS], p, "predictor"), i_tg[POS]).mean()) + \
            (1 - cos(lin(i_on[POS], p, "predictor"), u_tg[USERS]).mean())
        loss = loss + 0.5 * (u_on.norm() + i_on.norm()) / N_ITEMS
        cl = 0.0
        for m in order:
            f = lin(p[f"raw.{m}"], p, f"trs.{m}")
            if n_mod == 2:
                f = f * (~torch.from_numpy(task.missing[m])).double()[:, None]
            g = lin(f[POS], p, "predictor")
            cl = cl + (1 - cos(g, i_tg[POS]).mean()) + (1 - cos(g, f.detach()[POS]).mean())
        return loss + 0.7 * cl

    compare(model, oracle, ID + ("raw.v",))
