"""Golden scenarios (tests/scenarios/*.yaml): Services and EndpointSlices as the manifest
source reads them, a sync, then packets, on every data path. The frontend table and every
verdict must be exactly the file's Expected document; UPDATE_GOLDEN=1 rewrites that from
the reference data path (tests/scenarios/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import golden
from tests.helpers.datapaths import REFERENCE, MakeDatapath, new_datapath


@pytest.mark.parametrize("path", golden.scenario_files(), ids=lambda p: p.stem)
def test_a_golden_scenario_gives_its_expected_tables_and_verdicts(
    path: Path, make_datapath: MakeDatapath, tmp_path: Path
) -> None:
    scenario = golden.read(path)
    if golden.UPDATE:
        expected = golden.run(
            scenario, lambda clock: new_datapath(REFERENCE, clock=clock), tmp_path
        )
        golden.write_expected(scenario, expected)
        scenario = golden.read(path)
    assert scenario.expected is not None, f"{path.name}: no Expected document: UPDATE_GOLDEN=1"
    actual = golden.run(scenario, lambda clock: make_datapath(clock=clock), tmp_path)
    assert golden.render(actual) == golden.render(scenario.expected), (
        f"{path.name} on this data path differs from its Expected document (-vv for the "
        "whole diff); if the reference path changed on purpose, UPDATE_GOLDEN=1 rewrites it"
    )


def test_there_are_golden_scenarios() -> None:
    assert len(golden.scenario_files()) >= 6
