"""What each way of judging an NCE difference buys per CPU-minute (issue 14's closing note asks for it).

Reads the records that `bench/noise_methods.py` wrote (nothing is trained here) and turns each design's
noise and CPU time into one number: the CPU-minutes that design would need for a 1-nat standard error,

    minutes for 1 nat = noise² × minutes,

where `noise` is the s.e. of the difference as the design ran and `minutes` the CPU time of every stage it
needed; and the CPU-minutes it would need to decide the difference at the size it measured,

    minutes to decide = (2 × noise / |value|)² × minutes,

because a recipe can lower the noise by shrinking the effect with it (warm-started models stay near p(x):
§5.3's FC3 rise is +23.6 nats from scratch and +0.7 warm), and only the second number sees that. Why noise² × minutes: the training noise of an NCE difference falls as 1/√replicates and its cost
rises with replicates, so noise² × minutes is what stays the same when the design is run with more seeds.
It is a lower bound where the test-set s.e. (which more seeds do not shrink) is a large part of the noise;
the records do not split the two, so the table says so instead of guessing.

    python bench/noise_per_minute.py [bench/results/noise_methods-quick-dynamics*.json ...]

Writes bench/results/noise_per_minute-<set>-<section>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))
from inversion.atomic import atomic_write_text  # noqa: E402
from inversion.provenance import commit  # noqa: E402
from inversion.reports.common import fmt, markdown_table  # noqa: E402


@dataclass(frozen=True)
class Design:
    """One way of judging one difference: its noise (nats), its CPU time and what 1 nat of s.e. would cost."""
    recipe: str
    design: str  # "independent models" or "paired seeds"
    layer: str
    difference: str
    value: float | None
    noise: float
    minutes: float
    n_seeds: int

    @property
    def minutes_for_one_nat(self) -> float | None:
        """noise² × minutes; None for a difference of a model with itself (§5.3's fall when the peak is the
        last checkpoint): its value is exactly 0, and so is its paired noise."""
        return None if self.noise == 0 or self.value == 0 else self.noise ** 2 * self.minutes

    @property
    def minutes_to_decide(self) -> float | None:
        """(2 × noise / |value|)² × minutes: the CPU time at which this difference, if its size is the one
        measured, would clear twice its noise. Shown beside minutes_for_one_nat because a recipe can buy low
        noise by shrinking the effect itself (warm-started models stay near p(x))."""
        if self.value is None or self.minutes_for_one_nat is None:
            return None
        return (2 * self.noise / abs(self.value)) ** 2 * self.minutes


def designs_of(record: dict, source: str) -> list[Design]:
    """Every (recipe, design, difference) of one noise_methods record."""
    for key in ("section", "params", "rows", "costs"):
        if key not in record:
            raise ValueError(f"{source}: no {key!r}; is it a bench/noise_methods.py record?")
    costs = {c["recipe"]: c for c in record["costs"]}
    out = []
    for r in record["rows"]:
        c = costs.get(r["recipe"])
        if c is None:
            raise ValueError(f"{source}: row recipe {r['recipe']!r} has no cost entry")
        for design, value, noise, minutes in (
                ("independent models", r["independent_value"], r["independent_noise"], c["independent_minutes"]),
                ("paired seeds", r["paired_value"], r["paired_noise"], c["paired_minutes"])):
            if noise is None:
                continue
            out.append(Design(r["recipe"], design, r["layer"], r["difference"], value, float(noise),
                              float(minutes), int(c["n_seeds"])))
    return out


def collect(paths: list[Path]) -> tuple[str, str, list[Design]]:
    """All designs of the records, each (recipe, design, layer, difference) once: records of one bench share
    their from-scratch rows, which must then agree."""
    seen: dict[tuple, Design] = {}
    sets = set()
    for p in paths:
        record = json.loads(p.read_text())
        sets.add((record.get("params"), record.get("section")))
        for d in designs_of(record, str(p)):
            k = (d.recipe, d.design, d.layer, d.difference)
            if k in seen and (abs(seen[k].noise - d.noise) > 1e-9 or abs(seen[k].minutes - d.minutes) > 1e-9):
                raise ValueError(f"{p}: {k} disagrees with an earlier record ({seen[k].noise} vs {d.noise} nats)")
            seen.setdefault(k, d)
    if len(sets) != 1:
        raise ValueError(f"records of different parameter sets or sections: {sorted(sets)}; pass one kind at a time")
    (params, section), = sets
    return params, section, list(seen.values())


def report(params: str, section: str, designs: list[Design], sources: list[str], at: str = "") -> str:
    base = {(d.layer, d.difference): d.minutes_for_one_nat for d in designs
            if d.recipe == "from scratch" and d.design == "independent models"}
    rows = []
    for d in designs:
        m, b, t = d.minutes_for_one_nat, base.get((d.layer, d.difference)), d.minutes_to_decide
        rows.append((d.recipe, d.design, f"{d.layer} {d.difference}", d.n_seeds, fmt(d.value, "+.2f"),
                     f"{d.noise:.2f}", f"{d.minutes:.1f}",
                     "n/a (a model minus itself)" if m is None else f"{m:.3g}",
                     f"{b / m:.3g}×" if m and b else "n/a", "n/a" if t is None else f"{t:.3g}"))
    return "\n".join([
        f"# CPU-minutes for a 1-nat s.e., per way of judging a {section} NCE difference ({params} set)", "",
        f"`python bench/noise_per_minute.py {' '.join(sources)}` (reads the records; trains nothing){at}", "",
        "minutes for 1 nat = noise² × CPU minutes of the design as it ran: what the design would need, run with "
        "more seeds, for a 1-nat s.e. Where the test-set s.e. is a large part of the noise this is a lower bound "
        "(more seeds do not shrink it); the records do not split the two. Gain = from-scratch independent "
        "models' minutes for 1 nat over this design's, same difference. Minutes to decide = (2 × noise / |value|)² × "
        "CPU minutes: when the difference, at its measured size, would clear twice its noise; a value near 0 makes "
        "it large (nothing to decide), and a value is itself noisy, so read it as an order of magnitude.", "",
        markdown_table(["recipe", "design", "difference", "seeds", "value (nats)", "noise (nats)", "CPU min",
                        "CPU min for 1 nat", "gain", "CPU min to decide"], rows)]) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", nargs="*", type=Path, help="noise_methods-*.json records (default: every "
                    "bench/results/noise_methods-quick-dynamics*.json)")
    args = ap.parse_args(argv)
    paths = args.records or sorted((REPO / "bench" / "results").glob("noise_methods-quick-dynamics*.json"))
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        ap.error(f"no such record: {', '.join(missing) or 'none found'}; run bench/noise_methods.py first")
    try:
        params, section, designs = collect(paths)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        ap.error(str(e))
    sources = [str(p.relative_to(REPO)) if p.resolve().is_relative_to(REPO) else str(p) for p in paths]
    git, date = commit(), time.strftime("%Y-%m-%d")
    at = f" at commit {git['commit'][:10]}{' (dirty)' if git['dirty'] else ''}, {date}"
    text = report(params, section, designs, sources, at)
    name = REPO / "bench" / "results" / f"noise_per_minute-{params}-{section}"
    atomic_write_text(name.with_suffix(".json"), json.dumps(
        dict(params=params, section=section, sources=sources, **git, date=date,
             designs=[{**asdict(d), "minutes_for_one_nat": d.minutes_for_one_nat,
                       "minutes_to_decide": d.minutes_to_decide} for d in designs]), indent=1))
    atomic_write_text(name.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
