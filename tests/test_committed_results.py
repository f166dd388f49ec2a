"""The results that come with the repository (cache/quick/ and cache/paper/; README "Committed results").

Each committed result is a whole stage result: its result.json names its stage, key and provenance (a clean
commit, a device, a date, its parameter set), and every small file it lists is committed beside it, never a
checkpoint. The quick set's committed results cover its whole plan, so `make book` on a fresh clone renders
the quick book without computing; a changed quick parameter fails here until its stages are recomputed and
committed (`python -m inversion.pipeline run --params quick`, then `git add` what `list` names).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from inversion import pipeline
from inversion.pipeline.cache import iter_refs
from inversion.provenance import committed_files

REPO = Path(__file__).resolve().parents[1]
COMMITTABLE = (".json", ".npz", ".npy")


def tracked(folder: str) -> list[str]:
    """The repository's files under ``folder`` (relative to the repository), as the pages see them."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return [str(p.relative_to(REPO)) for p in committed_files(str(REPO / folder))]


@pytest.mark.parametrize("param_set", ["quick", "paper"])
def test_each_committed_result_is_whole_and_says_where_it_came_from(param_set):
    files = set(tracked(f"cache/{param_set}"))
    results = sorted(name for name in files if name.endswith("/result.json"))
    if param_set == "quick":
        assert results, "cache/quick/ has no committed results (README: Committed results)"
    assert not [f for f in files if not f.endswith(COMMITTABLE)], "only result.json and small npz/npy/json files"
    assert {str(Path(f).parent) for f in files} == {str(Path(r).parent) for r in results}, \
        "a committed file without its stage's result.json"
    for name in results:
        r = json.loads((REPO / name).read_text())
        folder = Path(name).parent
        assert folder.name == f"{r['stage']}-{r['key']}", name
        p = r["provenance"]
        assert re.fullmatch(r"[0-9a-f]{40}", p["commit"]) and p["dirty"] is False, f"{name}: computed at a clean commit"
        assert p["param_set"] == param_set and p["device"] and p["date"] and p["wall_s"] >= 0, name
        for listed in r.get("files", {}):
            if listed.endswith((".npz", ".npy")):
                assert str(folder / listed) in files, f"{name} lists {listed}, which is not committed"


def test_the_committed_quick_results_cover_the_quick_plan():
    """`make book` on a fresh clone renders the quick book from these results alone."""
    files = set(tracked("cache/quick"))
    P = pipeline.load_params("quick")
    refs = {r.dirname: r for r in iter_refs(pipeline.plan(P))}
    missing = sorted(d for d in refs if f"cache/quick/{d}/result.json" not in files)
    assert not missing, (f"{len(missing)} of the quick plan's {len(refs)} stages have no committed result, e.g. "
                         f"{missing[:3]}: a quick parameter or a stage version changed. Recompute them with "
                         "`python -m inversion.pipeline run --params quick` and commit their folders under "
                         "cache/quick/ (result.json, npz, npy; `git add -f` is not needed, .gitignore keeps "
                         "checkpoints out)")
