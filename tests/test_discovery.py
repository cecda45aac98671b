"""Model discovery is the run layer's: the registry holds what was registered, and importing the
model side pulls in neither the baselines nor the harness."""
import subprocess
import sys
from pathlib import Path

from benchmarks.run.discovery import model_entries, model_names, registry_entry
from models.registry import GROUPS

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def test_the_registry_holds_only_what_was_imported_until_the_runner_discovers():
    out = _fresh("import sys\n"
                 "import models.dgmrec, models.registry as r\n"
                 "print(r.names())\n"
                 "print(sorted({m.split('.')[0] for m in sys.modules} & {'baselines', 'benchmarks'}))\n"
                 "from benchmarks.run.discovery import model_names\n"
                 "print(len(model_names()), 'LightGCN' in model_names())")
    registered, foreign, discovered = out.splitlines()
    assert registered == "['DGMRec']"  # the registry imports no model package by itself
    assert foreign == "[]"  # models/ imports neither baselines/ nor benchmarks/
    assert discovered == "25 True"


def test_names_are_grouped_then_sorted_by_name():
    names = model_names()
    groups = [registry_entry(n).group for n in names]
    assert groups == sorted(groups, key=GROUPS.index)  # one block per group, in the order of GROUPS
    for g in GROUPS:
        block = [n for n in names if registry_entry(n).group == g]
        assert block == sorted(block, key=str.lower)
    assert names[0] == "ItemPop" and names[-1] == "DGMRec"
    assert [e.name for e in model_entries()] == names
