"""How models are shown: the paper's row order of its tables (models it does not list sort after
these, by name, within their group)."""

PAPER_ORDER = ("ItemPop", "MFBPR", "NGCF", "LightGCN", "SGL", "SimGCL", "VBPR", "MMGCN", "GRCN", "SLMRec", "BM3",
               "LATTICE", "MGCN", "LGMRec", "DAMRS", "GUME", "CI2MG", "MILK", "SIBRAR", "DGMRec")
