"""Provenance's commit and dirty flag, on a throwaway git repository; the CPU description from /proc/cpuinfo."""

import subprocess

import pytest

from inversion.provenance import commit, cpu_description


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


def _cpuinfo(name, family, model, flags, processors=2):
    block = (f"processor\t: {{i}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: {name}\nflags\t\t: fpu sse2 {flags}\n\n")
    return "".join(block.format(i=i) for i in range(processors))


@pytest.mark.parametrize("family,model,flags,expected", [
    (23, 1, "avx avx2 fma", "AMD EPYC (family 23 model 1, AVX2)"),  # session 21's: bf16 3x slower than fp32
    (25, 17, "avx avx2 avx512f avx512_bf16", "AMD EPYC (family 25 model 17, AVX512_BF16)"),
    (6, 143, "avx avx2 avx512f avx512_bf16 amx_bf16", "AMD EPYC (family 6 model 143, AMX_BF16)"),
    (6, 85, "avx avx2 avx512f", "AMD EPYC (family 6 model 85, AVX512F)"),
    (6, 15, "sse4_1", "AMD EPYC (family 6 model 15)"),
])
def test_cpu_description_tells_apart_cpus_that_share_a_name(family, model, flags, expected):
    """Three CPUs named "AMD EPYC" or "Intel Xeon" gave the FC classifier three sets of bytes: the record
    must say which one ran, by family/model and by the widest vector instructions (the kernels MKL picks)."""
    assert cpu_description(_cpuinfo("AMD EPYC", family, model, flags)) == expected


def test_cpu_description_reads_the_first_processor_and_needs_a_model_name():
    text = _cpuinfo("AMD EPYC", 23, 1, "avx2") + _cpuinfo("Other", 25, 17, "avx512f")
    assert cpu_description(text) == "AMD EPYC (family 23 model 1, AVX2)"
    assert cpu_description("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n") is None  # an ARM's
    assert cpu_description("model name\t: Some CPU\n") == "Some CPU"
