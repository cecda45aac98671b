"""Shared graph and loss blocks against dense computations written out by hand."""
import numpy as np
import pytest
import torch

from models.graphs import bipartite, knn_graph, lightgcn, sym_normalize, to_torch_sparse
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
    from models.graphs import built_on
    assert built_on(torch.zeros(2, 2)) == {}
    assert built_on(torch.zeros(2, 2, device="meta")) == {"built_on": "meta"}
