"""The results that come with the repository (cache/quick/, cache/paper/ and a plan switch under way in
cache/next/quick/; README "Committed results").

Each committed result is a whole stage result: its result.json names its stage, key and provenance (a clean
commit, a device, a date, its parameter set), and every small file it lists is committed beside it. A
checkpoint is committed only where later sessions must start from the same bytes (the p(x) and classifiers
that several sessions' models start from; README "Committed results"), and then it is the very checkpoint
that its result.json describes (the sha256 recorded there). The quick set's committed results cover its whole plan, so `make book` on a fresh clone renders
the quick book without computing; a changed quick parameter fails here until its stages are recomputed and
committed (`python -m inversion.pipeline run --params quick`, then `git add` what `list` names).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from inversion import pipeline
from inversion.pipeline.cache import file_sha256, iter_refs
from inversion.provenance import committed_files
from inversion.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
COMMITTABLE = (".json", ".npz", ".npy")
MAX_CHECKPOINT_BYTES = 4 << 20  # a shared start (a p(x), a classifier of the quick set), not a paper-size model
# The cache roots whose results are committed: the quick and paper sets', and the stages of a change to the quick
# plan that takes several sessions to compute (cache/next/README.md), held to the same rules
CACHE_ROOTS = ["quick", "paper", "next/quick"]


def tracked(folder: str) -> list[str]:
    """The repository's files under ``folder`` (relative to the repository), as the pages see them."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return [str(p.relative_to(REPO)) for p in committed_files(str(REPO / folder))]


@pytest.mark.parametrize("root", CACHE_ROOTS)
def test_each_committed_result_is_whole_and_says_where_it_came_from(root):
    files = {f for f in tracked(f"cache/{root}") if not Path(f).parent.name.endswith(".work")}
    results = sorted(name for name in files if name.endswith("/result.json"))
    if root == "quick":
        assert results, "cache/quick/ has no committed results (README: Committed results)"
    odd = [f for f in files if not f.endswith(COMMITTABLE) and not f.endswith(".pt")]
    assert not odd, f"only result.json, small npz/npy/json files and shared-start checkpoints: {odd[:3]}"
    assert {str(Path(f).parent) for f in files} == {str(Path(r).parent) for r in results}, \
        "a committed file without its stage's result.json"
    for name in results:
        r = json.loads((REPO / name).read_text())
        folder = Path(name).parent
        assert folder.name == f"{r['stage']}-{r['key']}", name
        p = r["provenance"]
        assert re.fullmatch(r"[0-9a-f]{40}", p["commit"]) and p["dirty"] is False, f"{name}: computed at a clean commit"
        assert p["param_set"] == Path(root).name and p["device"] and p["date"] and p["wall_s"] >= 0, name
        for listed in r.get("files", {}):
            if listed.endswith((".npz", ".npy")):
                assert str(folder / listed) in files, f"{name} lists {listed}, which is not committed"
    for name in sorted(f for f in files if f.endswith(".pt")):
        r = json.loads((REPO / Path(name).parent / "result.json").read_text())
        sha = file_sha256(REPO / name)
        assert r.get("checksums", {}).get(Path(name).name) == sha, \
            f"{name} is committed, but its result.json does not record it (sha256 {sha[:16]}...): another run's"
        assert (REPO / name).stat().st_size <= MAX_CHECKPOINT_BYTES, f"{name}: a large checkpoint, not a start"


@pytest.mark.parametrize("root", CACHE_ROOTS)
def test_a_committed_training_in_progress_is_resumable_and_not_yet_done(root):
    """A stage longer than a session may be committed half-trained: its work folder (``<stage>-<key>.work/``:
    the run's config.json and the resumable state.pt of ``inversion.training.fit``, and the cache's
    sessions.json and opened.json: the processes that trained it so far and the dependency bytes it started
    from), so the next session
    resumes it with the same command (README "Committed results"). Once the stage is done and committed,
    its work folder must go (the cache deletes it; `git rm -r` it)."""
    files = set(tracked(f"cache/{root}"))
    folders = sorted({Path(f).parent for f in files if Path(f).parent.name.endswith(".work")})
    for folder in folders:
        inside = sorted(Path(f).name for f in files if Path(f).parent == folder)
        assert {"config.json", "state.pt"} <= set(inside) <= {"config.json", "state.pt", "sessions.json", "opened.json"}, \
            (f"{folder}: a training in progress is config.json + state.pt (+ the cache's sessions.json and "
             f"opened.json: who trained it so far, from which dependency bytes), not {inside}")
        done = folder.with_name(folder.name[:-len(".work")]) / "result.json"
        assert str(done) not in files, f"{folder} is committed beside its finished result {done}: git rm -r it"
        assert (REPO / folder / "state.pt").stat().st_size <= MAX_CHECKPOINT_BYTES, f"{folder}: too large"
        state = load_checkpoint(REPO / folder / "state.pt")
        assert state["progress"]["step"] > 0 and json.loads((REPO / folder / "config.json").read_text()), folder


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


@pytest.mark.parametrize("root", CACHE_ROOTS)
def test_committed_results_were_computed_from_the_committed_starts(root):
    """A committed result that opened a dependency's checkpoint which is itself committed (a shared start:
    README "Committed results") opened exactly those bytes. So models fine-tuned in different sessions, on
    different machines, from one committed p(x) and classifier can be shown to share them."""
    files = set(tracked(f"cache/{root}"))
    checkpoints = {f[len(f"cache/{root}/"):]: file_sha256(REPO / f) for f in files if f.endswith(".pt")}
    for name in sorted(f for f in files if f.endswith("/result.json")):
        opened = json.loads((REPO / name).read_text()).get("opened", {})
        for path, sha in opened.items():
            if path in checkpoints:
                assert sha == checkpoints[path], (
                    f"{name} was computed from another {path} than the committed one (sha256 {sha[:16]}... vs "
                    f"{checkpoints[path][:16]}...): recompute it from the committed start")


@pytest.mark.parametrize("root", CACHE_ROOTS)
def test_committed_results_and_trainings_in_progress_share_one_lineage_per_stage(root):
    """A committed stage folder holds one run of its stage, so everything committed that opened one of its
    checkpoints (a finished result's ``opened``, a half-trained ``.work``'s opened.json) opened the bytes its
    committed result.json describes (``checksums``), whether or not the checkpoint itself is committed.

    The FC classifier's 32 MB checkpoint is not committed; recomputed on another CPU it has other bytes
    (Intel Xeon 81.58 %, AMD EPYC 81.26 %). A model trained on the recomputed one, committed beside the other
    run's classifier result, would pair seeds that were conditioned on different classifiers while the record
    names one: this fails instead, and the model must wait for the committed lineage's bytes (its CPU) or be
    committed with its own classifier result and every model of the other lineage recomputed."""
    files = set(tracked(f"cache/{root}"))
    results = {f: json.loads((REPO / f).read_text()) for f in files if f.endswith("/result.json")}
    openers = {f: r.get("opened", {}) for f, r in results.items()}
    openers.update({f: json.loads((REPO / f).read_text()) for f in files
                    if f.endswith("/opened.json") and Path(f).parent.name.endswith(".work")})
    results = {Path(f).parent.name: r for f, r in results.items()}
    checked = 0
    for name, opened in sorted(openers.items()):
        for path, sha in opened.items():
            folder, file = path.split("/", 1)
            if folder not in results:
                continue
            recorded = results[folder].get("checksums", {}).get(file)
            assert sha == recorded, (
                f"{name} opened {path} with sha256 {sha[:16]}..., but the committed {folder}/result.json describes "
                f"{str(recorded)[:16]}...: two runs of {folder} are committed as one. Recompute {name} from the "
                f"committed lineage (on the CPU that produced it), or recompute that lineage")
            checked += 1
    if root == "quick":
        assert checked > 0, "no committed quick result records the checkpoints it opened"
