"""The one build entry point: discovery, --list, unknown names, and each build's --help (no real builds)."""

import subprocess
import sys

import pytest

from course_lib import build
from course_lib.paths import ZOO_DIR

#: builds that must exist (other experiments modules may add more)
EXPECTED = ("moe", "attention", "prune", "rag", "encoder", "zoo")


def test_builds_are_discovered_with_outputs_that_exist():
    found = build.builds()
    assert set(EXPECTED) <= set(found)
    assert list(found)[-1] == "zoo"  # experiments modules first (sorted), then the zoo
    for name, b in found.items():
        assert b.name == name and b.outputs and b.summary, name
        assert callable(b.main)
        for out in b.outputs:
            assert (ZOO_DIR / out).is_file(), f"{name}: {out} is not in course_lib/zoo_data"


def test_list_prints_every_build(capsys):
    assert build.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split()[0]: line for line in lines}
    assert set(EXPECTED) <= set(by_name)
    assert "moe_runs.json" in by_name["moe"] and "prune_grid.json" in by_name["prune"]
    assert "tiny.safetensors" in by_name["zoo"] and "rag_queries.safetensors" in by_name["rag"]
    assert build.main(["--list", "extra"]) == 2


def test_unknown_name_is_an_error_listing_the_names(capsys):
    assert build.main(["no-such-build"]) == 2
    err = capsys.readouterr().err
    assert "unknown build 'no-such-build'" in err
    assert all(name in err for name in EXPECTED)
    assert build.main([]) == 2  # no name: usage on stderr
    assert build.find("no-such-build") is None
    assert build.find("moe").outputs == ("moe_runs.json",) and build.find("zoo").main is build.zoo.main


@pytest.mark.parametrize("name", EXPECTED)
def test_each_build_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build.main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m course_lib.")


def test_bad_arguments_exit_2_before_building(capsys):
    for argv in (["moe", "no-such-run"], ["prune", "no-such-part"], ["rag", "train"], ["attention", "--bogus"]):
        with pytest.raises(SystemExit) as exit_info:
            build.main(argv)
        assert exit_info.value.code == 2, argv


def test_module_runs_as_a_command():
    proc = subprocess.run([sys.executable, "-m", "course_lib.build", "--list"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {line.split()[0] for line in proc.stdout.splitlines()} >= set(EXPECTED)
    proc = subprocess.run([sys.executable, "-m", "course_lib.build", "nope"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown build" in proc.stderr


def test_every_output_is_in_the_manifest_with_its_build_command():
    from course_lib import paths

    manifest = paths.manifest()
    for b in build.builds().values():
        for out in b.outputs:
            assert out in manifest, f"{out} (build {b.name}) is not in zoo_data/MANIFEST.json"
            assert manifest[out]["rebuild"].startswith(f"python -m course_lib.build {b.name}"), out
