"""Every golden spec, run in-process, gives exactly the frozen summary and time series.

A restructuring must keep these green; a change meant to change results
regenerates ``expected/`` (``python -m tests.golden.golden --update``) in a
commit of its own that says why.
"""

import json

import pytest

from tests.golden.golden import SPECS, VALIDATION, expected, golden_outputs, validation_outputs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_run_is_unchanged(name, tmp_path):
    summary, digest = golden_outputs(name, str(tmp_path))
    want_summary, want_digest = expected(name)
    assert digest["columns"] == want_digest["columns"]
    assert digest["rows"] == want_digest["rows"]
    assert summary == want_summary
    assert digest["sha256"] == want_digest["sha256"]


def test_reduced_validation_is_unchanged():
    """The cover letter at 4 GiB and 4 tasks, and the published host-memory measurements
    (services/sim/validation.py: reduced): a change that moves docs/validation.md's
    figures shows here; regenerate with --update and rerun ``make validate``."""
    assert validation_outputs() == json.loads(VALIDATION.read_text())
