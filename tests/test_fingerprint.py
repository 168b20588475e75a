"""course_lib.fingerprint: the machine fingerprint stored beside every kept number."""

import json

import pytest

from course_lib import fingerprint

AVX2 = {"cpu": "AMD EPYC", "isa": ["avx2", "fma"], "torch_threads": 2}
AVX512 = {"cpu": "AMD EPYC", "isa": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"], "torch_threads": 2}
AMX = {"cpu": "Intel Xeon", "isa": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]}


@pytest.fixture(scope="module")
def fp():
    return fingerprint.machine()


def test_machine_keys_and_types(fp):
    expected = {
        "cpu": str,
        "arch": str,
        "logical_cpus": int,
        "isa": list,
        "caches": dict,
        "python": str,
        "torch": str,
        "torch_threads": int,
        "torch_isa": str,
        "blas": str,
        "onednn": bool,
        "omp_wait_policy": str,
    }
    for key, kind in expected.items():
        assert isinstance(fp[key], kind), (key, fp[key])
    assert {"physical_cores", "memory_gb", "memory_available_gb", "cuda", "load_average"} <= set(fp)
    assert fp["logical_cpus"] >= 1 and fp["torch_threads"] >= 1
    assert set(fp["isa"]) <= set(fingerprint.ISA_FLAGS)
    assert all(isinstance(v, int) and v > 0 for v in fp["caches"].values())
    if fp["load_average"] is not None:
        assert len(fp["load_average"]) == 3 and all(x >= 0 for x in fp["load_average"])
    json.dumps(fp)  # stored in JSON artefacts as it is


def test_machine_line_is_one_line(fp):
    text = fingerprint.machine_line(fp)
    assert "\n" not in text and fp["cpu"] in text and f"torch {fp['torch']}" in text
    assert fingerprint.isa_summary(fp) in text
    assert "OMP_WAIT_POLICY=" in text


def test_isa_summary_for_each_kind():
    assert fingerprint.isa_summary(AVX2) == "AVX2 only"
    assert fingerprint.isa_summary(AVX512) == "AVX-512 + VNNI + BF16"
    assert fingerprint.isa_summary(AMX) == "AVX-512 + VNNI + BF16 + AMX"
    assert fingerprint.isa_summary({"isa": ["avx2", "avx_vnni"]}) == "AVX2 + VNNI"
    assert fingerprint.isa_summary({"isa": ["sse4_2"]}) == "no AVX2"
    assert fingerprint.isa_summary({}) == "ISA unknown"


def test_same_kind():
    assert fingerprint.same_kind(AVX2, dict(AVX2))
    assert not fingerprint.same_kind(AVX2, AVX512)  # same CPU name, other ISA: machines of one kind differ
    assert not fingerprint.same_kind(AVX2, {**AVX2, "torch_threads": 4})
    assert not fingerprint.same_kind(AVX2, None) and not fingerprint.same_kind(None, AVX2)
    assert not fingerprint.same_kind({}, {})


def test_provenance_wording():
    same = fingerprint.provenance(AVX2, AVX2)
    assert same.startswith("Measured on AMD EPYC, AVX2 only, 2 threads; this machine: AMD EPYC, AVX2 only, 2 threads")
    assert "the same kind" in same
    other = fingerprint.provenance(AVX512, AVX2)
    assert "Measured on AMD EPYC, AVX-512 + VNNI + BF16, 2 threads" in other and "a different kind" in other
    for unknown in (None, {}, {"isa": ["avx2"]}):
        text = fingerprint.provenance(unknown, AVX2)
        assert text.startswith("Measured on a machine that was not recorded") and "AVX2 only" in text


def test_provenance_defaults_to_this_machine(fp):
    assert f"this machine: {fp['cpu']}" in fingerprint.provenance(fp)
    assert "the same kind" in fingerprint.provenance(fp)
