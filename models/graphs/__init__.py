"""Graph building blocks shared by every model, each written once, one topic per module.

* ``sparse``: scipy matrices as torch CSR tensors, sparse products (with a transpose prepared
  once for the backward pass) and the degree normalisations.
* ``user_item``: the user-item graph of a task's training interactions in every form the models
  use (normalised adjacencies, the edge list, edge-dropped views).
* ``knn``: feature kNN item graphs, built in row chunks, and their cache.
* ``item_item``: item-item graphs from interactions (co-occurrence) and from other graphs
  (shared neighbours).
* ``propagation``: message passing (LightGCN, sums over edge lists, hypergraphs).
* ``transport``: the Sinkhorn optimal-transport product.

Import each block from its module (``from models.graphs.knn import knn_graph``); this package
re-exports nothing.
"""
import warnings

# Every module here multiplies by torch CSR tensors, whose support torch still labels beta.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
