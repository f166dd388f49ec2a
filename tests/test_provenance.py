"""Provenance's commit and dirty flag, on a throwaway git repository."""

import subprocess

import pytest

from inversion.provenance import commit


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.delenv("INVERSION_COMMIT", raising=False)
    monkeypatch.delenv("INVERSION_DIRTY", raising=False)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "code.py").write_text("x = 1\n")
    (tmp_path / "cache" / "quick" / "stage-1").mkdir(parents=True)
    (tmp_path / "cache" / "quick" / "stage-1" / "result.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_clean_checkout_is_not_dirty(repo):
    got = commit(repo)
    assert got["dirty"] is False and len(got["commit"]) == 40


def test_changed_code_is_dirty(repo):
    (repo / "lib" / "code.py").write_text("x = 2\n")
    assert commit(repo)["dirty"] is True


def test_rewritten_cache_result_is_not_dirty(repo):
    # a stage recomputed into the committed cache (e.g. for its missing checkpoint) is data, not code
    (repo / "cache" / "quick" / "stage-1" / "result.json").write_text('{"recomputed": true}\n')
    assert commit(repo)["dirty"] is False


def test_untracked_files_are_not_dirty(repo):
    (repo / "notes.txt").write_text("scratch\n")
    assert commit(repo)["dirty"] is False


def test_environment_overrides(repo, monkeypatch):
    monkeypatch.setenv("INVERSION_COMMIT", "abc")
    monkeypatch.setenv("INVERSION_DIRTY", "1")
    assert commit(repo) == {"commit": "abc", "dirty": True}
