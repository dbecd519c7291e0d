"""Every golden spec, run in-process, gives exactly the frozen summary and time series.

A restructuring must keep these green; a change meant to change results
regenerates ``expected/`` (``python -m tests.golden.golden --update``) in a
commit of its own that says why.
"""

import pytest

from tests.golden.golden import SPECS, expected, golden_outputs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_run_is_unchanged(name, tmp_path):
    summary, digest = golden_outputs(name, str(tmp_path))
    want_summary, want_digest = expected(name)
    assert digest["columns"] == want_digest["columns"]
    assert digest["rows"] == want_digest["rows"]
    assert summary == want_summary
    assert digest["sha256"] == want_digest["sha256"]
