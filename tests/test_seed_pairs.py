"""bench/seed_pairs.py: seed-paired NCE differences read from NCE stages' per-image log-probs."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import seed_pairs  # noqa: E402


def write_stage(root: Path, name: str, log_probs: np.ndarray) -> str:
    (root / name).mkdir(parents=True)
    np.save(root / name / "log_probs.npy", log_probs)
    return name


def test_seed_paired_difference_from_the_stages(tmp_path, monkeypatch):
    """Two networks, two seeds: per-image differences with a common per-image difficulty. The per-seed paired
    differences are the means of a - b (exactly), and the seed-paired value is their mean."""
    monkeypatch.setenv("INVERSION_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "smoke"
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-800, 10, 200)
    a = [write_stage(root, f"nce-a{s}", difficulty + 8 + s + rng.normal(0, 1, 200)) for s in range(2)]
    b = [write_stage(root, f"nce-b{s}", difficulty + rng.normal(0, 1, 200)) for s in range(2)]
    out = tmp_path / "out"
    assert seed_pairs.main(["--params", "smoke", "--out", str(out), f"a={','.join(a)}", f"b={','.join(b)}"]) == 0
    rec = json.loads((out / "seed_pairs-smoke.json").read_text())
    (row,) = rec["differences"]
    per_seed = [np.mean(np.load(root / x / "log_probs.npy") - np.load(root / y / "log_probs.npy")) for x, y in zip(a, b)]
    assert [r["value"] for r in row["per_seed"]] == pytest.approx(per_seed, abs=1e-12)
    assert row["seed_paired"]["value"] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert row["seed_paired"]["n_seeds"] == 2 and row["seed_paired"]["noise"] > row["seed_paired"]["test_se"]
    assert "**+8.5" in (out / "seed_pairs-smoke.md").read_text()   # 8 + mean(0, 1), give or take the noise


@pytest.mark.parametrize("arg,message", [("a", "write NAME=NCE_STAGE"), ("a=samples-1", "not an NCE stage"),
                                         ("a=nce-missing", "does not exist")])
def test_bad_arguments_say_what_to_write(tmp_path, monkeypatch, capsys, arg, message):
    monkeypatch.setenv("INVERSION_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:
        seed_pairs.main(["--params", "smoke", "--out", str(tmp_path), arg])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_gain_over_the_reference_per_seed_and_over_seeds(tmp_path, monkeypatch):
    """--reference: each model's gain over the p(x) is the mean of its log-probs minus the reference's (exactly),
    and the mean over seeds is the mean of the per-seed gains; a single-seed network has per-seed gains only."""
    monkeypatch.setenv("INVERSION_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "smoke"
    rng = np.random.default_rng(1)
    difficulty = rng.normal(-800, 10, 100)
    px = write_stage(root, "unconditional_nce-p", difficulty + rng.normal(0, 1, 100))
    a = [write_stage(root, f"nce-a{s}", difficulty + 30 + 2 * s + rng.normal(0, 1, 100)) for s in range(2)]
    b = write_stage(root, "nce-b0", difficulty + 20 + rng.normal(0, 1, 100))
    out = tmp_path / "out"
    assert seed_pairs.main(["--params", "smoke", "--out", str(out), "--reference", px,
                            f"a={','.join(a)}", f"b={b}"]) == 0
    rec = json.loads((out / "seed_pairs-smoke.json").read_text())
    gains = {g["network"]: g for g in rec["gains_over_reference"]}
    ref = np.load(root / px / "log_probs.npy")
    want = [np.mean(np.load(root / x / "log_probs.npy") - ref) for x in a]
    assert [p["value"] for p in gains["a"]["per_seed"]] == pytest.approx(want, abs=1e-12)
    assert gains["a"]["seed_paired"]["value"] == pytest.approx(np.mean(want), abs=1e-12)
    assert gains["a"]["seed_paired"]["seed_sd"] == pytest.approx(np.std(want, ddof=1), abs=1e-12)
    assert "seed_paired" not in gains["b"] and gains["b"]["per_seed"][0]["value"] == pytest.approx(
        np.mean(np.load(root / b / "log_probs.npy") - ref), abs=1e-12)
    assert rec["reference"] == px and "| b | +2" in (out / "seed_pairs-smoke.md").read_text()


@pytest.mark.parametrize("reference,message", [("samples-1", "not an NCE stage"),
                                               ("unconditional_nce-missing", "does not exist")])
def test_a_bad_reference_says_what_to_give(tmp_path, monkeypatch, capsys, reference, message):
    monkeypatch.setenv("INVERSION_CACHE", str(tmp_path / "cache"))
    write_stage(tmp_path / "cache" / "smoke", "nce-a0", np.zeros(10))
    with pytest.raises(SystemExit) as e:
        seed_pairs.main(["--params", "smoke", "--out", str(tmp_path), "--reference", reference, "a=nce-a0"])
    assert e.value.code == 2 and message in capsys.readouterr().err
