"""What every chapter shares: the verdict rules (reproduced / contradicted / undecided / no test) and the
provenance rows that say what each stage result is."""

from __future__ import annotations

import json
import subprocess

import pytest

from inversion.pipeline.cache import Result
from inversion.reports.common import Claim, Difference, claims_table, count_reproduced, decide, describe_result, \
    provenance_caption, provenance_table, undecided_why


@pytest.mark.parametrize("d, sign, expected", [
    (Difference(5.0, 2.0), +1, True),     # reproduced: the claimed sign beyond 2 noise units
    (Difference(-5.0, 2.0), +1, False),   # contradicted: the other sign beyond 2
    (Difference(3.9, 2.0), +1, None),     # undecided: inside
    (Difference(-5.0, 2.0), -1, True),    # a claimed decrease
    (Difference(5.0, 0.0), +1, None),     # no noise to judge by
    (Difference(float("nan"), 1.0), +1, None),
])
def test_decide(d, sign, expected):
    assert decide(d, sign) is expected


def test_statuses_and_counts():
    make = lambda ok, disc=True: Claim("c", "p", "o", ok, "crit", discriminates=disc)  # noqa: E731
    claims = [make(True), make(False), make(None), make(True, disc=False)]
    assert [c.status for c in claims] == ["reproduced", "contradicted", "undecided", "no test"]
    assert [c.label for c in claims] == ["✓ reproduced", "✗ **contradicted**", "○ undecided", "— no test"]
    assert count_reproduced(claims) == (1, 2)  # a non-discriminating ✓ counts for nothing
    assert "4.0 nats or more" in undecided_why(Difference(1.0, 2.0), " nats", 1)
    assert "no noise" in undecided_why(Difference(1.0, 0.0))


@pytest.mark.parametrize("d, text", [(Difference(1.06, 1.04), "+1.1 ± 1.0"), (Difference(1.2, 0.123), "+1.20 ± 0.12"),
                                     (Difference(-0.0524, 0.0312), "-0.052 ± 0.031"), (Difference(25.0, 12.6), "+25.0 ± 12.6"),
                                     (Difference(0.5, 0.0), "+0.5 ± 0.0"), (Difference(2.0, float("nan")), "+2.0 ± nan")])
def test_a_difference_is_written_to_its_noise_precision(d, text):
    assert d.pm() == text


def test_claims_table_has_four_columns_with_each_test_and_each_reason():
    table = claims_table([Claim("NCE falls", "yes", "-3 ± 2", None, "drop > 2 × noise", why="inside the noise"),
                          Claim("accuracy", "99 %", "98.9 %", True, "within 1 point")]).data
    header, sep, undecided, reproduced = table.splitlines()
    assert header.count("|") == 5 and sep.count("---") == 4
    assert "NCE falls<br><small>test: drop > 2 × noise</small>" in undecided
    assert "○ undecided<br><small>inside the noise</small>" in undecided
    assert reproduced.rstrip(" |").endswith("✓ reproduced")  # no reason where none is needed


def _write(root, name, config, deps=None):
    d = root / name
    d.mkdir()
    (d / "result.json").write_text(json.dumps(dict(stage=name.split("-")[0], key=name.split("-")[1], config=config,
                                                   deps=deps or {}, metrics={}, provenance={})))
    return d


def test_provenance_rows_say_what_each_result_is(tmp_path):
    _write(tmp_path, "classifier-a", dict(dataset="mnist", arch="conv", overfit_n=100, steps=4000, seed=0))
    _write(tmp_path, "snapshot-b", dict(dataset="mnist", step=1000, n_eval=5000), {"classifier": "classifier-a"})
    _write(tmp_path, "inversion-c", dict(layer="fc3", steps=150, seed=1), {"classifier": "snapshot-b"})
    nce = _write(tmp_path, "nce-d", dict(n_test=500, batch_size=256),
                 {"classifier": "snapshot-b", "inversion": "inversion-c"})
    assert describe_result(Result(nce)) == \
        "MNIST, conv network, overfitted (100 examples), snapshot after 1000 updates, FC3, seed 1, n_test=500"
    plain = _write(tmp_path, "classifier-e", dict(dataset="fashion_mnist", arch="fc", overfit_n=None, steps=10, seed=0))
    assert describe_result(Result(plain)) == "Fashion-MNIST, fc network, steps=10"


def test_power_says_what_a_comparison_could_detect_and_whether_the_papers_effect_was_in_reach():
    from inversion.reports.common import MARGIN, Power

    p = Power(2.2, paper_effect=4.46)
    assert p.detectable == MARGIN * 2.2 and p.powered is True and "within reach" in p.text()
    weak = Power(3.0, paper_effect=-4.46)  # the sign of the paper's effect does not matter, its size does
    assert weak.powered is False and "too small for this run to see" in weak.text() and "6.0 nats or more" in weak.text()
    assert Power(1.0).powered is None and "paper" not in Power(1.0).text()
    assert Power(0.0, paper_effect=1.0).powered is None and "no noise" in Power(0.0).text()
    table = claims_table([Claim("gap", "+4.46 nats", "+1.0 ± 3.0 nats", None, "> 2 × noise", power=weak)]).data
    assert "+1.0 ± 3.0 nats<br><small>detectable: 6.0 nats or more" in table


def test_provenance_says_which_results_came_with_the_repository(tmp_path):
    """A committed result (cache/<set>/ is committable) is told apart from one computed in this checkout: in the
    table's sentence, in a per-row column when they mix, and in the figure caption."""
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    cache = tmp_path / "cache" / "quick"
    cache.mkdir(parents=True)
    old = _write(cache, "classifier-a", dict(dataset="mnist", arch="conv", steps=10, seed=0))
    git("add", "cache")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    new = _write(cache, "classifier-b", dict(dataset="mnist", arch="fc", steps=10, seed=0))
    only_old = provenance_table([Result(old)], "quick").data
    assert "Every one of them came with the repository (committed under `cache/quick/`" in only_old
    assert "| stored |" not in only_old
    assert "None of them came with the repository" in provenance_table([Result(new)], "quick").data
    mixed = provenance_table([Result(old), Result(new)], "quick").data
    assert "1 of them came with the repository" in mixed and "the other 1 were computed in this checkout" in mixed
    rows = {line.split("|")[1].strip(): line for line in mixed.splitlines() if "`classifier-" in line}
    assert "| committed |" in rows["`classifier-a`"] and "| this checkout |" in rows["`classifier-b`"]
    assert provenance_caption([Result(old), Result(new)], "quick").endswith("2 stage results, 1 committed with the "
                                                                             "repository.")


def test_a_share_s_stderr_is_taken_across_images_not_samples():
    """Two images, one whose samples all keep the class and one whose samples all lose it: the binomial s.e.
    over the 20 samples would be 0.115; across the 2 images it is sd(1, 0) / sqrt(2) = 0.5."""
    import numpy as np

    from inversion.reports.common import share_stderr

    agree = np.array([[1.0] * 10, [0.0] * 10])
    assert share_stderr(agree) == pytest.approx(0.5)
    assert share_stderr(np.full((5, 10), 1.0)) == 0.0  # every image alike: no spread
    assert share_stderr(agree[:1]) is None  # one image: no spread to measure
    with pytest.raises(ValueError, match=r"\[images, samples per image\]"):
        share_stderr(agree.ravel())


def test_a_share_is_shown_with_its_stderr_only_where_there_is_one():
    from inversion.reports.common import share_pm

    assert share_pm(0.2513, 0.0162, 1) == "25.1 ± 1.6 %"
    assert share_pm(0.5404, 0.0372) == "54 ± 4 %"
    assert share_pm(0.81, None) == "81 %"


def test_most_samples_is_decided_by_twice_the_stderr_and_by_the_point_estimate_only_without_one():
    from inversion.reports.common import mostly

    assert mostly(0.653, 0.019) is True and mostly(0.40, 0.03) is False
    assert mostly(0.54, 0.0201) is None and mostly(0.54, 0.0199) is True  # the margin is 2 s.e.
    assert mostly(0.46, 0.0201) is None and mostly(0.46, 0.0199) is False
    assert mostly(0.54, None) is True and mostly(0.46, None) is False  # no s.e. stored: the point estimate
    assert mostly(1.0, 0.0) is True and mostly(0.5, 0.0) is None  # every image alike


def test_flat_results_adds_the_stages_each_result_was_computed_from_once(tmp_path):
    """An NCE's result rests on its model and classifier (its recorded ``deps``): a page's provenance lists
    them too, each once however many results share them; a dependency not in the cache is skipped."""
    from inversion.reports.common import flat_results

    def stage(name, wall, **deps):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps({"deps": deps, "provenance": {"wall_s": wall}}))
        return Result(tmp_path / name)

    stage("classifier-c", 10.0)
    stage("model-a", 5.0, classifier="classifier-c")
    stage("model-b", 6.0, classifier="classifier-c", start="unconditional-gone")
    tree = {"nce": [stage("nce-a", 1.0, inversion="model-a", classifier="classifier-c")],
            "replicates": {1: stage("nce-b", 2.0, inversion="model-b", classifier="classifier-c")}}
    flat = flat_results(tree)
    assert sorted(r.dir.name for r in flat) == ["classifier-c", "model-a", "model-b", "nce-a", "nce-b"]
    assert sum(r.provenance["wall_s"] for r in flat) == 24.0
