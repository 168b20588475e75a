"""Chapter 05's runs: the stored grid, its reader and its build command (no real builds)."""

from __future__ import annotations

import pytest

from course_lib import build
from course_lib.experiments import quant as quant_runs


def test_precomputed_grid_is_complete_and_small():
    assert quant_runs.GRID_PATH.stat().st_size < 1_000_000
    grid = quant_runs.load_grid()
    for key, spec in (("patient", quant_runs.PATIENT_GRID), ("minilm", quant_runs.MINILM_GRID)):
        n = len(spec["methods"]) * len(spec["bits"]) * len(spec["groups"])
        assert len(grid[key]["points"]) == n
        for m in spec["methods"]:
            assert quant_runs.grid_point(grid, key, m, 4, spec["groups"][0])["bytes"] > 0
    fp = grid["patient"]["fp32"]["ppl"]
    assert all(p["ppl"] > 0.9 * fp for p in grid["patient"]["points"])
    with pytest.raises(ValueError, match="no grid point"):
        quant_runs.grid_point(grid, "patient", "rtn", 5, 64)


def test_the_build_is_listed_and_checks_its_parts_before_building():
    b = build.builds()["quant"]
    assert b.outputs == quant_runs.OUTPUTS == ("quant_grid.json",) and b.main is quant_runs.main
    with pytest.raises(SystemExit) as exit_info:
        quant_runs.main(["no-such-part"])
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="parts"):
        quant_runs.build_grid(("everything",))
