"""bench/noise_per_minute.py: the CPU-minutes a way of judging an NCE difference needs, from noise_methods records."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import noise_per_minute as npm  # noqa: E402


def record(noise_scratch=10.0, minutes=8.0, paired_noise=2.0, value=4.0, fall=0.0):
    return {"section": "dynamics", "params": "quick", "seeds": [1, 2], "warm_steps": 0,
            "rows": [{"recipe": "from scratch", "layer": "fc3", "difference": "rise", "independent_value": value,
                      "independent_noise": noise_scratch, "paired_value": value, "paired_noise": paired_noise},
                     {"recipe": "from scratch", "layer": "fc3", "difference": "fall", "independent_value": fall,
                      "independent_noise": noise_scratch, "paired_value": fall, "paired_noise": 0.0}],
            "costs": [{"recipe": "from scratch", "independent_minutes": minutes, "paired_minutes": 2 * minutes,
                       "n_seeds": 3}]}


def test_minutes_for_one_nat_is_what_stays_the_same_with_more_seeds():
    """A design run with 4× the seeds has half the noise at 4× the cost: the same minutes for 1 nat."""
    one = npm.Design("r", "paired seeds", "fc3", "rise", 4.0, noise=2.0, minutes=8.0, n_seeds=3)
    four = npm.Design("r", "paired seeds", "fc3", "rise", 4.0, noise=1.0, minutes=32.0, n_seeds=12)
    assert one.minutes_for_one_nat == four.minutes_for_one_nat == 32.0
    # |value| 4 is already 2 × noise 2: decided at the 8 minutes it ran
    assert one.minutes_to_decide == pytest.approx(8.0)
    # |value| 2 needs noise 1, half the noise: 4× the 8 minutes; and more seeds do not change that
    half = npm.Design("r", "d", "l", "x", 2.0, 2.0, 8.0, 3)
    assert half.minutes_to_decide == pytest.approx(32.0)
    assert npm.Design("r", "d", "l", "x", 2.0, 1.0, 32.0, 12).minutes_to_decide == pytest.approx(32.0)


def test_a_model_minus_itself_gets_no_rate_and_no_division_by_zero():
    designs = npm.designs_of(record(), "r.json")
    fall = [d for d in designs if d.difference == "fall"]
    assert len(fall) == 2 and all(d.minutes_for_one_nat is None and d.minutes_to_decide is None for d in fall)
    text = npm.report("quick", "dynamics", designs, ["r.json"])
    assert "n/a (a model minus itself)" in text and "nan" not in text and "inf" not in text


def test_the_report_gives_each_design_its_gain_over_independent_models_from_scratch():
    designs = npm.designs_of(record(noise_scratch=10.0, minutes=8.0, paired_noise=2.0), "r.json")
    rise = {d.design: d for d in designs if d.difference == "rise"}
    assert rise["independent models"].minutes_for_one_nat == 800.0
    assert rise["paired seeds"].minutes_for_one_nat == 64.0  # 2² × 16 min
    text = npm.report("quick", "dynamics", designs, ["r.json"])
    assert "| 12.5× |" in text and "| 1× |" in text


def test_records_that_disagree_or_are_not_noise_methods_records_are_refused(tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(record()))
    b.write_text(json.dumps(record(noise_scratch=11.0)))
    c.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="disagrees with an earlier record"):
        npm.collect([a, b])
    with pytest.raises(ValueError, match="no 'section'"):
        npm.collect([c])
    params, section, designs = npm.collect([a, a])  # the same rows twice are one design each
    assert (params, section, len(designs)) == ("quick", "dynamics", 4)


def test_the_command_line_says_what_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        npm.main([str(tmp_path / "none.json")])
    assert e.value.code == 2 and "no such record" in capsys.readouterr().err


def test_the_committed_dynamics_records_give_finite_rates():
    """The committed records read without error, and every rate is finite and positive where defined."""
    paths = sorted((npm.REPO / "bench" / "results").glob("noise_methods-quick-dynamics*.json"))
    if not paths:
        pytest.skip("no noise_methods record committed")
    _, _, designs = npm.collect(paths)
    rates = [d.minutes_for_one_nat for d in designs if d.minutes_for_one_nat is not None]
    assert rates and all(math.isfinite(r) and r > 0 for r in rates)
