"""The numbers a built book shows a reader, per page: to check that two builds of one parameter set agree.

    python tools/book_numbers.py book/_build/html                      # every page's numbers, as JSON
    python tools/book_numbers.py --compare BEFORE_HTML AFTER_HTML      # exit 1 if any page differs

Reads each chapter page of a built site (``<html dir>/<chapter>.html``), takes the text of its article —
prose with every glued value rendered, tables, claims, figure captions — and collects every number in it.
Left out: code (``<pre>``, ``<code>``), the provenance tables, the provenance line under each figure and the
introduction's "minutes of compute", whose wall times, dates and commits differ between any two runs. ``--compare`` reports, per page, the
numbers whose counts differ. Numbers, not sentences, are compared, because a change of layout may reword
a sentence around the same value; the figures themselves are compared by the numbers behind them.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"(?<![\w.])[−+-]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[−+-]?\d+)?")
PAGES = ("intro", "background", "layers", "architectures", "dynamics", "estimators")


def page_text(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(), "html.parser")
    main = soup.find("article") or soup.find("main") or soup
    for tag in main.find_all(["pre", "code", "script", "style"]):
        tag.decompose()
    for table in main.find_all("table"):
        head = table.find("thead")
        if head is not None and "stage result" in head.get_text():
            table.decompose()
    for p in main.find_all(["p", "em"]):
        text = p.get_text()
        if text.startswith("Run: parameter set") or text.startswith("Parameter set ") or "minutes of compute" in text:
            p.decompose()
    return main.get_text(" ")


def page_numbers(path: Path) -> collections.Counter:
    return collections.Counter(n.replace("−", "-") for n in NUMBER.findall(page_text(path)))


def site_numbers(html_dir: Path) -> dict[str, collections.Counter]:
    return {name: page_numbers(html_dir / f"{name}.html") for name in PAGES if (html_dir / f"{name}.html").exists()}


def compare(before: dict, after: dict) -> list[str]:
    problems = []
    for page in sorted(set(before) | set(after)):
        if page not in before or page not in after:
            problems.append(f"{page}: only in the {'after' if page in after else 'before'} build")
            continue
        lost, gained = before[page] - after[page], after[page] - before[page]
        if lost or gained:
            problems.append(f"{page}: only before {dict(lost)}; only after {dict(gained)}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="a built site's html folder, or two with --compare")
    ap.add_argument("--compare", action="store_true", help="compare BEFORE AFTER; exit 1 if they differ")
    args = ap.parse_args(argv)
    if not args.compare:
        json.dump({k: dict(v) for k, v in site_numbers(Path(args.dirs[0])).items()}, sys.stdout, indent=1,
                  ensure_ascii=False)
        return 0
    if len(args.dirs) != 2:
        ap.error("--compare takes two html folders: BEFORE AFTER")
    before, after = (site_numbers(Path(d)) for d in args.dirs)
    for page in before:
        print(f"{page}: {sum(before[page].values())} numbers before, {sum(after.get(page, {}).values())} after")
    problems = compare(before, after)
    print("\n".join(problems) if problems else "identical: every page shows the same numbers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
