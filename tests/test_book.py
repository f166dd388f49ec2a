"""The book with the smoke parameter set: every chapter executed, the jupyter-book build (warnings are
errors), the built pages, and a real headless browser on the offline site.

All of it runs against a fresh stage cache in a temporary directory (INVERSION_CACHE), so the stages are
really computed here. Each chapter is executed once, by the build's own papermill step
(``build_book.execute``), and reported as its own test; the site is then built from those notebooks
(``build_book.py --no-execute``). Until 2026-12-04 the chapters ran twice, under ``nbval --nbval-lax`` and
again in the build: in lax mode without NBVAL_CHECK_OUTPUT markers nbval checks only that no cell raises, which
papermill's execution checks as well, and the second run cost ~65-80 s of the suite (measured on an AMD EPYC of
family 23: the chapters' execution from a filled smoke cache 64 s, the site build alone 7 s).
"""

import html
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import build_book  # noqa: E402

CHAPTERS = build_book.chapter_names()
TITLES = {"intro": "Inverting supervised representations: a reproducible book",
          "background": "Background: autoregressive inversion models and the bound",
          "layers": "Inverting the layers of a classifier",
          "architectures": "Comparing architectures on affNIST",
          "dynamics": "Training dynamics: compression during training",
          "inverters": "Other ways to invert a layer",
          "estimators": "Appendix: other estimators of mutual information"}
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = REPO / "tests" / "browser" / "node_modules" / "playwright-core"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    env = {**os.environ, "INVERSION_CACHE": str(root / "cache"), "PYTHONWARNINGS": "ignore"}
    return root, env


def test_chapter_sources_are_text_notebooks():
    assert set(CHAPTERS) == set(TITLES), f"chapters/ holds {CHAPTERS}"
    toc = (REPO / "_toc.yml").read_text()
    for name in CHAPTERS:
        src = (REPO / "chapters" / f"{name}.md").read_text()
        assert "format_name: myst" in src and "```{code-cell}" in src
        assert re.search(r"```\{code-cell\} ipython3\n:tags: \[parameters\]\n\nparams = \"quick\"", src), \
            f"{name}: the first code cell must be the parameters cell with params = \"quick\""
        assert re.search(rf"(root|file): {name}\b", toc), f"{name} is not in _toc.yml"


def test_build_book_refuses_a_compile_setting_it_cannot_read(tmp_path):
    """COMPILE=yes must not silently build without compiling: only 0 and 1 are read."""
    env = {**os.environ, "COMPILE": "yes"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "build_book.py"), "--out", str(tmp_path),
                           "--no-execute", "--no-build"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "COMPILE='yes': write COMPILE=1" in proc.stderr


@pytest.fixture(scope="module")
def executed(workspace):
    """Every chapter executed once with papermill and the smoke set, in the build's order (the introduction
    last), into the workspace's book folder: {chapter: None, or the error papermill raised}."""
    root, env = workspace
    out = root / "book"
    out.mkdir()
    errors = {}
    with pytest.MonkeyPatch.context() as mp:  # the kernels inherit the fresh cache
        for k in ("INVERSION_CACHE", "PYTHONWARNINGS"):
            mp.setenv(k, env[k])
        for name in CHAPTERS:
            try:
                build_book.execute(name, "smoke", out)
                errors[name] = None
            except Exception as e:  # papermill's PapermillExecutionError names the cell and its traceback
                errors[name] = f"{type(e).__name__}: {e}"
    return out, errors


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_runs_with_the_smoke_set(executed, chapter):
    """Every code cell of the chapter ran, in order, and none raised."""
    out, errors = executed
    assert errors[chapter] is None, f"{chapter} failed:\n{str(errors[chapter])[-5000:]}"
    cells = [c for c in json.loads((out / f"{chapter}.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in cells if "".join(c["source"]).strip()]
    assert len(counts) >= 3 and None not in counts and counts == sorted(counts), f"{chapter}: {counts}"
    assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]


@pytest.fixture(scope="module")
def built(workspace, executed):
    """The site built from the executed chapters (warnings are errors); returns the html folder."""
    root, env = workspace
    out, errors = executed
    if any(errors.values()):
        pytest.fail(f"not built: chapters failed to execute ({', '.join(n for n, e in errors.items() if e)})")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "build_book.py"), "--params", "smoke", "--out",
                           str(out), "--no-execute"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"build failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
    return out / "_build" / "html"


def test_book_builds_with_every_chapter_and_nothing_remote(built):
    pages = {p.stem: p.read_text() for p in built.glob("*.html")}
    for name in CHAPTERS:
        page = "index" if name == "intro" and "intro" not in pages else name
        assert page in pages, f"no page for {name}"
        assert TITLES[name] in pages[page], f"{name}: title missing from the built page"
    assert build_book.check_site(built, CHAPTERS) == []
    # the checker itself must catch a remote script or stylesheet
    (built / "bad.html").write_text('<html><head><script src="https://cdn.example.org/x.js"></script>'
                                    '<link rel="stylesheet" href="//cdn.example.org/y.css"></head></html>')
    try:
        assert len(build_book.check_site(built, CHAPTERS)) == 2
    finally:
        (built / "bad.html").unlink()
    for name, page in pages.items():
        for m in re.finditer(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", page):
            assert not re.match(r"(https?:)?//", m.group(1)), f"{name}: {m.group(0)}"
    # offline assets are really there and referenced
    layers = pages["layers"]
    assert "_static/mathjax/tex-chtml.js" in layers and (built / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert "_static/widgets/embed.js" in layers and (built / "_static" / "widgets" / "embed.js").exists()
    assert "application/vnd.jupyter.widget-state+json" in layers, "the run's widget state was not saved"
    assert layers.count("application/vnd.jupyter.widget-view+json") == 1, "exactly one widget (the scrubber)"
    assert "inversion-scrubber" in layers
    # glued numbers rendered, and each stage-backed chapter ends with its claims and provenance tables
    for name in ("background", "layers", "architectures", "dynamics", "inverters"):
        assert "verdict" in pages[name] and "Provenance" in pages[name], name
    for name, page in pages.items():  # a string glued as text shows its Python quotes: glue it as Markdown
        assert not re.search(r"""class="pasted-text">['"]""", page), f"{name}: a quoted string glued as text"
    for name, page in pages.items():  # parameter cells stay in the sources, off the reader's page
        shown = html.unescape(re.sub(r"<[^>]+>", "", page))
        assert 'params = "smoke"' not in shown and "compute = True" not in shown, f"{name}: a parameters cell is shown"
    assert "Run: parameter set smoke" in layers, "figures carry their provenance"
    for name, page in pages.items():  # every figure numbered by chapter, with a caption
        figures = page.count("<figure")
        numbered = re.findall(r'<span class="caption-number">Fig\. (\d+)\.(\d+) </span>', page)
        assert len(numbered) == figures, f"{name}: {figures} figures, {len(numbered)} numbered captions"
    assert len(re.findall(r'class="caption-number">Fig\. 2\.', layers)) == 3, "Fig. 1, 5a and 2 of the paper"
    # a number in the prose is the run's number (glued from the stage result, not typed)
    from inversion import pipeline
    from inversion.pipeline.layers import layers_plan

    clf = layers_plan(pipeline.load_params("smoke"), "mnist")["classifier"]
    text = re.sub(r"<[^>]+>", "", layers)
    cache_root = built.parents[2] / "cache" / "smoke"
    acc = json.loads((cache_root / clf.dirname / "result.json").read_text())["metrics"]["test_accuracy"]
    assert f"The MNIST classifier reaches {100 * acc:.2f} % test accuracy" in text
    assert "Traceback" not in "".join(pages.values()), "an executed cell failed"


@pytest.mark.parametrize("chapter,overrides", [
    ("layers", {"layers": {"datasets": ["mnist"], "layers": ["conv1", "logits"]}}),
    ("architectures", {"architectures": {"archs": ["conv_gmp", "conv"]}}),
    ("dynamics", {"dynamics": {"layers": ["logits"]}}),
])
def test_chapters_run_with_fewer_layers_or_networks(built, workspace, chapter, overrides, monkeypatch):
    """A parameter override that leaves out layers, networks or datasets must not break a chapter (its
    prose names no layer in a glue key). Reuses the stages the build computed, so it costs seconds."""
    import jupytext
    import papermill

    root, env = workspace
    nb = jupytext.read(REPO / "chapters" / f"{chapter}.md")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    monkeypatch.setenv("INVERSION_CACHE", env["INVERSION_CACHE"])  # the kernel inherits it
    out = root / f"{chapter}-override.ipynb"
    papermill.execute_notebook(nb, str(out), parameters={"params": "smoke", "overrides": overrides, "compute": False},
                               kernel_name="python3", progress_bar=False, cwd=str(REPO))
    assert "Traceback" not in out.read_text()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_browser_scrubs_offline(built, tmp_path):
    if not Path(CHROMIUM).exists() or not PLAYWRIGHT.exists():
        pytest.fail(f"needs {CHROMIUM} and {PLAYWRIGHT} (`make browser-deps` installs both)")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=built,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        proc = subprocess.run(["node", str(REPO / "tests" / "browser" / "check_book.mjs"), "--url",
                               f"http://127.0.0.1:{port}/", "--chromium", CHROMIUM, "--shots", str(tmp_path)],
                              capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        server.wait(10)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["external"] == [], f"requests left the machine: {report['external']}"
    assert report["errors"] == [], report["errors"]
    assert report["ok"], report["failures"]
    assert report["steps"]["slider"]["changed"] and report["steps"]["layer"]["changed"]
    assert report["steps"]["mathjax"]["containers"] > 10
    assert (tmp_path / "scrubber-final.png").stat().st_size > 5000
