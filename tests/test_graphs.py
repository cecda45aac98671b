"""Shared graph and loss blocks against dense computations written out by hand."""
import numpy as np
import pytest
import torch

from models.graphs.knn import built_on, knn_graph
from models.graphs.propagation import lightgcn, lightgcn_backbone
from models.graphs.sparse import sym_normalize, to_torch_sparse
from models.graphs.user_item import bipartite
from models.losses import bpr_loss, emb_norm, info_nce, info_nce_eps_fused, squared_l2


def dense_knn(x, k, before=None, after=None):
    """The reference recipe with a dense n x n matrix (only for tiny n)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    if before is not None:
        s[:, before] = 0
        s[before, :] = 0
        s[before, before] = 1
    kept = np.zeros_like(s)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    np.put_along_axis(kept, idx, np.take_along_axis(s, idx, axis=1), axis=1)
    if after is not None:
        kept[:, after] = 0
        kept[after, :] = 0
        kept[after, after] = 1
    d = kept.sum(axis=1)
    inv = np.where(d > 0, np.clip(d, 1e-7, None) ** -0.5, 0)
    return inv[:, None] * kept * inv[None, :]


@pytest.mark.parametrize("chunk", [1, 3, None])
@pytest.mark.parametrize("mode", ["none", "before", "after"])
def test_knn_graph_matches_dense_recipe(chunk, mode):
    rng = np.random.default_rng(0)
    x = rng.random((11, 6)).astype(np.float32) + 0.05  # positive: no ties at zero similarity
    flags = np.zeros(11, bool)
    flags[[2, 7]] = True
    kw = {"before": {"isolate_before": flags}, "after": {"isolate_after": flags}}.get(mode, {})
    got = knn_graph(x, 4, chunk_rows=chunk, **kw).toarray()
    want = dense_knn(x.astype(np.float64), 4, before=flags if mode == "before" else None,
                     after=flags if mode == "after" else None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if mode != "none":
        assert got[2, 2] == pytest.approx(1.0) and np.count_nonzero(got[2]) == 1  # isolated: self-loop only
        assert np.count_nonzero(got[:, 7]) == 1
    if mode == "before":
        assert all(np.count_nonzero(got[i]) == 4 for i in range(11) if not flags[i])  # re-selected neighbours


# Items with many exact ties: duplicates (0/1, 2/3), items at the same angle to others (2, 3 and 7 all
# at cos 1/√2 to item 0), a zero row (9: no neighbour scores above 0) and a negative one (10).
TIES = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1],
                 [1, 1, 1], [0, 0, 0], [-1, 0, 0]], dtype=np.float32)


def tie_oracle(x, k, before, after, tol=1e-6):
    """The kNN rule written densely in float64, per row: ``(must, tied, need, gone, sims)``.

    Row i keeps its k largest similarities (columns of items isolated before the ranking score 0).
    Entries above the k-th largest value (``must``) are kept; of the entries equal to it
    (``tied``) exactly ``need`` are picked, and which ones is the implementation's choice. Picked
    entries pointing to an item isolated after the ranking, or of weight 0, are dropped
    (``gone``). An isolated row is ``None``: only its self-loop of 1.
    """
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros(x.shape), where=norms > 0)
    s = unit @ unit.T
    s[:, before] = 0.0
    rows = []
    for i in range(len(x)):
        if before[i] or after[i]:
            rows.append(None)
            continue
        kth = np.sort(s[i])[::-1][k - 1]
        must = set(np.flatnonzero(s[i] > kth + tol))
        tied = set(np.flatnonzero(np.abs(s[i] - kth) <= tol))
        gone = set(np.flatnonzero(after | (np.abs(s[i]) <= tol)))
        rows.append((must, tied, k - len(must), gone, s[i]))
    return rows


@pytest.mark.parametrize("chunk", [2, None])
@pytest.mark.parametrize("k", [1, 3, 4, 6])
@pytest.mark.parametrize("mode", ["none", "before", "after", "both"])
def test_knn_graph_with_ties_against_dense_oracle(mode, k, chunk):
    n = len(TIES)
    before, after = np.zeros(n, bool), np.zeros(n, bool)
    if mode in ("before", "both"):
        before[[4, 7]] = True
    if mode in ("after", "both"):
        after[[3, 7]] = True  # 7 isolated both ways: still one self-loop
    kw = {"isolate_before": before if before.any() else None, "isolate_after": after if after.any() else None}
    raw = knn_graph(TIES, k, normalize=False, chunk_rows=chunk, **kw)
    got = raw.toarray()
    for i, row in enumerate(tie_oracle(TIES, k, before, after)):
        cols = set(np.flatnonzero(got[i]))
        if row is None:
            assert cols == {i} and got[i, i] == 1.0
            continue
        must, tied, need, gone, sims = row
        assert must - gone <= cols <= (must | tied) - gone
        # of the `need` tied entries picked, those pointing to a gone item are not there
        assert need - len(tied & gone) <= len(cols & tied) <= need
        np.testing.assert_allclose(got[i, sorted(cols)], sims[sorted(cols)], rtol=1e-6)
    assert raw.nnz == np.count_nonzero(got)  # no stored zeros
    # normalised: D^{-1/2} K D^{-1/2} with D the row sums, rows without a positive sum dropped
    deg = got.sum(axis=1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-7)), 0.0)
    norm = knn_graph(TIES, k, chunk_rows=chunk, **kw).toarray()
    np.testing.assert_allclose(norm, inv[:, None] * got * inv[None, :], rtol=1e-6, atol=1e-7)
    assert not got[9].any() and not norm[9].any()  # the zero row has no neighbour


def test_knn_graph_ties_cut_at_k():
    """The oracle's tie rule bites: row 0 has 0 and 1 (cos 1), then 2, 3, 7 tied at 1/√2 for the two
    remaining places of k = 4; exactly two of them are kept, whichever the ranking picks."""
    got = knn_graph(TIES, 4, normalize=False).toarray()
    assert got[0, 0] == got[0, 1] == 1.0
    assert np.count_nonzero(got[0, [2, 3, 7]]) == 2
    np.testing.assert_allclose(got[0][got[0] != 0][2:], [2 ** -0.5] * 2, rtol=1e-6)
    assert np.count_nonzero(got[0]) == 4
    # row 10 (negative) ranks itself, then the zeros of 4, 5, 6 and 9 (dropped), then -1/√3 (item 8)
    six = knn_graph(TIES, 6, normalize=False).toarray()
    assert set(np.flatnonzero(six[10])) == {8, 10} and six[10, 8] == pytest.approx(-(3 ** -0.5))


def test_knn_graph_needs_a_positive_k():
    with pytest.raises(ValueError, match="k >= 1"):
        knn_graph(TIES, 0)


def test_ui_adjacency_and_lightgcn():
    users, items = np.array([0, 0, 1]), np.array([0, 1, 1])
    a = bipartite(2, 2, users, items).toarray()
    assert a.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    norm = sym_normalize(a).toarray()
    deg = a.sum(1) + 1e-7
    np.testing.assert_allclose(norm, a / np.sqrt(np.outer(deg, deg)), rtol=1e-6)
    e0 = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    adj = to_torch_sparse(norm)
    got = lightgcn(adj, e0, 2)
    n = torch.tensor(norm, dtype=torch.float32)
    np.testing.assert_allclose(got.numpy(), ((e0 + n @ e0 + n @ n @ e0) / 3).numpy(), rtol=1e-5)


def test_lightgcn_backbone_stacks_propagates_and_splits():
    # 2 users, 3 items on a directed (not symmetric) graph, so the prepared transpose matters
    g = torch.Generator().manual_seed(2)
    dense = (torch.rand(5, 5, generator=g, dtype=torch.float64) * (torch.rand(5, 5, generator=g) > 0.4))
    adj, adj_t = to_torch_sparse(dense.numpy()).double(), to_torch_sparse(dense.T.contiguous().numpy()).double()
    users = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    u, i = lightgcn_backbone(adj, users, items, 2, adj_t)
    e0 = torch.cat([users, items]).detach()
    want = (e0 + dense @ e0 + dense @ dense @ e0) / 3
    torch.testing.assert_close(u.detach(), want[:2])
    torch.testing.assert_close(i.detach(), want[2:])
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    gu, gi = torch.autograd.grad((torch.cat([u, i]) * w).sum(), (users, items))
    m = (torch.eye(5, dtype=torch.float64) + dense + dense @ dense) / 3
    torch.testing.assert_close(torch.cat([gu, gi]), m.T @ w)  # d/dE0 of Σ w ⊙ (M E0) = Mᵀ w


def test_losses_by_hand():
    # Score gaps s⁺ - s⁻ of 2 and -0.5: asymmetric, so a flipped sign (or swapped arguments) moves the
    # loss from 0.5505 to 1.3005. -log σ(x) = log(1 + e^-x).
    pos, neg = torch.tensor([3.0, 0.5]), torch.tensor([1.0, 1.0])
    want = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(0.5))) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(want, rel=1e-6)
    assert bpr_loss(pos, neg, gamma=1e-10).item() == pytest.approx(want, rel=1e-6)
    assert bpr_loss(neg, pos).item() == pytest.approx((np.log1p(np.exp(2.0)) + np.log1p(np.exp(-0.5))) / 2, rel=1e-6)
    a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert emb_norm(a, b).item() == pytest.approx((5 + np.sqrt(5)) / 2)
    assert squared_l2(a, b, batch_size=4).item() == pytest.approx(0.5 * (25 + 5) / 4)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = 0.5
    yn = y / y.norm(dim=1, keepdim=True)
    logits = (x @ yn.T / t).numpy()
    want = np.mean([np.log(np.exp(logits[r]).sum()) - logits[r, r] for r in range(2)])
    assert info_nce(x, y, t).item() == pytest.approx(want, rel=1e-5)
    want_eps = np.mean([-np.log(np.exp(logits[r, r]) / (np.exp(logits[r]).sum() + 1e-9) + 1e-9) for r in range(2)])
    assert info_nce(x, y, t, eps=1e-9).item() == pytest.approx(want_eps, rel=1e-5)


@pytest.mark.parametrize("eps", [1e-9, 0.3])
def test_fused_eps_nce_matches_autograd_form(eps):
    # SGL and SimGCL train with the fused form; value and both gradients must equal the plain
    # autograd NCE_eps (eps=0.3 makes the eps terms matter, 1e-9 is the reference value).
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    want = info_nce(a, b, 0.2, eps=eps)
    ga, gb = torch.autograd.grad(want, (a, b))
    got = info_nce_eps_fused(a, b, 0.2, eps=eps)
    fa, fb = torch.autograd.grad(got, (a, b))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    torch.testing.assert_close(fa, ga, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fb, gb, rtol=1e-10, atol=1e-12)


def test_lightgcn_gradients_with_prepared_transpose():
    # lightgcn's backward multiplies by the prepared transpose: for a non-symmetric graph the
    # gradient must equal the dense computation's, and omitting adj_t is only right when symmetric.
    g = torch.Generator().manual_seed(1)
    dense = (torch.rand(6, 6, generator=g) * (torch.rand(6, 6, generator=g) > 0.5)).to(torch.float64)
    adj, adj_t = to_torch_sparse(dense.numpy()), to_torch_sparse(dense.T.contiguous().numpy())
    adj, adj_t = adj.to(torch.float64), adj_t.to(torch.float64)
    e0 = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((lightgcn(adj, e0, 2, adj_t) * w).sum(), e0)
    want_val = (e0 + dense @ e0 + dense @ dense @ e0) / 3
    (want,) = torch.autograd.grad((want_val * w).sum(), e0)
    torch.testing.assert_close(grad, want)
    (wrong,) = torch.autograd.grad((lightgcn(adj, e0, 2) * w).sum(), e0)
    assert not torch.allclose(wrong, want)


def test_graphs_built_off_the_cpu_are_cached_apart():
    """A kNN graph is built where the features live; one built on an accelerator gets its own cache
    key (its products round differently), and CPU-built keys are unchanged."""
    assert built_on(torch.zeros(2, 2)) == {}
    assert built_on(torch.zeros(2, 2, device="meta")) == {"built_on": "meta"}
