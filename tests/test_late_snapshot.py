"""bench/late_snapshot.py: §5.3's late − early and overfit − regular differences, as the chapter computes them."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import late_snapshot  # noqa: E402
from inversion.reports.common import Estimate, SeedSpread  # noqa: E402
from inversion.reports.dynamics import Accuracy, DynamicsSummary  # noqa: E402


def summary(shift: dict, n=300, seeds=(0, 1, 2), steps=(3000, 10000)) -> DynamicsSummary:
    """One layer (fc3), two regimes, paired seeds: per-image difficulty shared by every model, plus
    ``shift[(regime, step)]`` nats, plus a per-seed offset common to all settings (what pairing cancels)."""
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-600, 20, n)
    offset = {s: rng.normal(0, 3) for s in seeds}
    by_seed = {g: {"fc3": {t: {s: difficulty + shift[(g, t)] + offset[s] + rng.normal(0, 0.5, n) for s in seeds}
                           for t in steps}} for g in ("regular", "overfit")}
    log_probs = {g: {"fc3": {t: by_seed[g]["fc3"][t][seeds[0]] for t in steps}} for g in by_seed}
    nce = {g: {"fc3": {t: Estimate(float(lp.mean()), 1.0) for t, lp in log_probs[g]["fc3"].items()}} for g in by_seed}
    acc = {g: {t: Accuracy(test=0.9, train=1.0) for t in steps} for g in by_seed}
    return DynamicsSummary(steps=list(steps), layers=["fc3"], regimes=["regular", "overfit"], nce=nce,
                           log_probs=log_probs, accuracy=acc, seed_spread={"fc3": SeedSpread(3.0, len(seeds))},
                           by_seed=by_seed)


def test_late_minus_early_is_the_mean_of_the_per_seed_paired_differences():
    shift = {("regular", 3000): 0.0, ("regular", 10000): -2.0, ("overfit", 3000): 0.05, ("overfit", 10000): 0.0}
    s = summary(shift)
    rows = {c.what: c for c in late_snapshot.compare(s, 3000, 10000)}
    fall = rows["regular: NCE(10000) − NCE(3000)"]
    want = np.mean([np.mean(s.by_seed["regular"]["fc3"][10000][k] - s.by_seed["regular"]["fc3"][3000][k])
                    for k in (0, 1, 2)])
    assert fall.value == pytest.approx(want, abs=1e-9) and fall.direction == -1
    assert fall.noise < 0.5, "the per-seed offsets cancel in a paired difference"
    assert rows["overfit: NCE(10000) − NCE(3000)"].direction == 0          # -0.05 against its noise
    assert rows["overfit − regular at 10000"].direction == 1                # +2 nats
    assert set(rows) == {"regular: NCE(10000) − NCE(3000)", "overfit: NCE(10000) − NCE(3000)",
                         "overfit − regular at 3000", "overfit − regular at 10000"}


def test_a_set_with_one_snapshot_is_refused(tmp_path, capsys):
    src = (Path(__file__).resolve().parents[1] / "params" / "smoke.yaml").read_text()
    one = tmp_path / "one.yaml"
    one.write_text(src.replace("  steps: [0, 10, 40]", "  steps: [40]"))
    with pytest.raises(SystemExit) as e:
        late_snapshot.main(["--params", str(one), "--out", str(tmp_path)])
    assert e.value.code == 2 and "give at least two snapshots" in capsys.readouterr().err


def test_a_run_not_computed_says_how_to_compute_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INVERSION_CACHE", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as e:
        late_snapshot.main(["--params", "smoke", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not computed" in err and "inversion.pipeline run" in err
