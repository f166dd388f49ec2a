"""Build the book: execute every chapter with papermill and a parameter set, then build the static site.

    python tools/build_book.py [--params quick] [--out book] [--only layers ...] [--no-build] [--no-execute]
                               [--workers N] [--compile]

0. With --workers N (or $WORKERS), the chapters' stages are first computed on a local Dask cluster of N
   processes (inversion.pipeline.engine); with --compile (or $COMPILE=1), first computed with their
   PixelCNN++ training compiled (``pipeline run --compile``: the same stages, faster from a few thousand
   steps), on those workers or in one process. The chapters then find them in the cache.
1. chapters/<name>.md (MyST-markdown jupytext notebooks, the only sources) are converted in memory and
   executed by papermill with ``params=<set>`` into <out>/<name>.ipynb. The introduction runs last, so it
   can report what the other chapters computed. Heavy steps are cached stages (inversion.pipeline), so a
   rerun with the same parameters only re-renders.
2. _config.yml and _toc.yml are copied beside the notebooks, the vendored MathJax and widget manager into
   <out>/assets (tools/vendor.py), and jupyter-book builds <out>/_build/html with warnings as errors.
3. The built pages are checked: every chapter has a page, and no page loads a script or stylesheet from
   a remote URL.

Exit status 0 only when all three steps succeed. Timings go to <out>/build-info.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = REPO / "chapters"
# Execution order: the introduction summarises the cache the others fill, so it runs last.
EXECUTION_ORDER = ("background", "layers", "architectures", "dynamics", "inverters", "estimators", "intro")
STAGE_SECTIONS = ("background", "layers", "architectures", "dynamics", "inverters", "estimators")  # with stages

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vendor  # noqa: E402


def chapter_names() -> list[str]:
    names = sorted(p.stem for p in CHAPTERS.glob("*.md"))
    return sorted(names, key=lambda n: EXECUTION_ORDER.index(n) if n in EXECUTION_ORDER else len(EXECUTION_ORDER))


def execute(name: str, params: str, out_dir: Path, extra: dict | None = None, timeout: int | None = None) -> float:
    """Run chapters/<name>.md through papermill into out_dir/<name>.ipynb; returns seconds."""
    import jupytext
    import papermill

    nb = jupytext.read(CHAPTERS / f"{name}.md")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    t0 = time.perf_counter()
    papermill.execute_notebook(nb, str(out_dir / f"{name}.ipynb"), parameters={"params": params, **(extra or {})},
                               kernel_name="python3", progress_bar=False, cwd=str(REPO), execution_timeout=timeout)
    hide_parameter_cells(out_dir / f"{name}.ipynb")
    return time.perf_counter() - t0


PARAMETER_TAGS = ("parameters", "injected-parameters")  # the chapter's own cell, papermill's copy


def hide_parameter_cells(path: Path) -> None:
    """Tag the parameters cell and papermill's injected copy ``remove-cell``: the reader's page starts with the
    paper, not with script furniture (the set in use is named on every page's provenance). The source keeps
    them for papermill; the notebook is rewritten atomically."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if any(t in tags for t in PARAMETER_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)


REMOTE = re.compile(r"""<(script|link)\b[^>]*?\b(src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""", re.I)


def check_site(html_dir: Path, chapters: list[str]) -> list[str]:
    """Problems with the built site: missing chapter pages, scripts/styles loaded from remote URLs."""
    problems = [f"no page for chapter {c}" for c in chapters if not (html_dir / f"{c}.html").exists()]
    for page in sorted(html_dir.glob("*.html")):
        for m in REMOTE.finditer(page.read_text(errors="replace")):
            problems.append(f"{page.name}: <{m.group(1)} {m.group(2)}={m.group(3)}>")
    return problems


def build(out_dir: Path) -> None:
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / f, out_dir / f)
    vendor.install(out_dir / "assets")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(out_dir), "--all", "-W", "--keep-going", "-q"]
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    sys.stdout.write(proc.stdout[-4000:])
    sys.stderr.write(proc.stderr[-8000:])
    if proc.returncode != 0:
        raise SystemExit(f"jupyter-book build failed (exit {proc.returncode}); see the warnings above")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=os.environ.get("PARAMS", "quick"), help="parameter set (name or YAML path)")
    ap.add_argument("--out", default=str(REPO / "book"), help="output folder (default book/)")
    ap.add_argument("--only", nargs="*", default=None, help="execute only these chapters (others must exist)")
    ap.add_argument("--no-execute", action="store_true", help="build from the notebooks already in --out")
    ap.add_argument("--no-build", action="store_true", help="execute only; do not build the site")
    ap.add_argument("--read-only", action="store_true", help="chapters only read the stage cache (compute=False)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default none)")
    ap.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS") or 0),
                    help="first compute the chapters' stages on a local Dask cluster of N worker processes "
                         "(python -m inversion.pipeline run --workers N); 0 (default): the chapters compute "
                         "them one after another as they execute")
    ap.add_argument("--compile", action="store_true", default=os.environ.get("COMPILE", "0") == "1",
                    help="first compute the chapters' stages with their PixelCNN++ training compiled "
                         "(python -m inversion.pipeline run --compile; on --workers N if given)")
    args = ap.parse_args(argv)
    if os.environ.get("COMPILE", "0") not in ("0", "1"):
        ap.error(f"COMPILE={os.environ['COMPILE']!r}: write COMPILE=1 to compile the stages' training, or 0 (default)")
    if args.workers < 0:
        ap.error(f"--workers must be >= 0, got {args.workers}")
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    chapters = chapter_names()
    info = {"params": args.params, "chapters": {}}
    t_all = time.perf_counter()
    if not args.no_execute and (args.workers or args.compile) and not args.read_only:
        sections = [c for c in chapters if c in STAGE_SECTIONS and (not args.only or c in args.only)]
        how = (f"on {args.workers} workers" if args.workers else "in one process") + (", compiled" if args.compile else "")
        print(f"computing the stages of {', '.join(sections)} {how} ...", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "inversion.pipeline", "run", "--params", args.params, "--workers",
               str(args.workers), "--only", *sections] + (["--compile"] if args.compile else [])
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print("computing the stages failed (see above)", file=sys.stderr)
            return 1
        info["stages_seconds"] = round(time.perf_counter() - t0, 1)
        info["workers"] = args.workers
        info["compiled"] = args.compile
    if not args.no_execute:
        extra = {"compute": False} if args.read_only else {}
        for name in chapters:
            if args.only and name not in args.only:
                continue
            print(f"executing {name} with params={args.params} ...", flush=True)
            secs = execute(name, args.params, out_dir, extra, args.timeout)
            info["chapters"][name] = round(secs, 1)
            print(f"  {name}: {secs:.1f} s", flush=True)
    if not args.no_build:
        t0 = time.perf_counter()
        build(out_dir)
        info["build_seconds"] = round(time.perf_counter() - t0, 1)
        problems = check_site(out_dir / "_build" / "html", chapters)
        if problems:
            print("site check failed:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print(f"built {out_dir / '_build' / 'html' / 'index.html'} in {info['build_seconds']:.1f} s", flush=True)
    info["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (out_dir / "build-info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"done in {info['total_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
