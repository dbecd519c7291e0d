"""The public face: ``import overcommit`` as the README shows it, and lazy exports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_importing_generated_protobuf_code_pulls_in_no_ray_matplotlib_or_simulation():
    r = _python(
        "import sys, overcommit.v1.host_pb2, overcommit.v1.guest_pb2_grpc\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'matplotlib')\n"
        "             or m.startswith(('services.sim', 'services.guest', 'services.host')))\n"
        "print(bad)",
        ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_public_names_resolve_and_unknown_names_fail_clearly():
    r = _python(
        "import overcommit\n"
        "print(sorted(n for n in overcommit.__all__ if callable(getattr(overcommit, n))))\n"
        "try:\n    overcommit.nope\nexcept AttributeError as e:\n    print(e)",
        ROOT,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert eval(lines[0]) == [
        "ExperimentSpec",
        "RunResult",
        "SpecError",
        "load_spec",
        "run_experiment",
        "run_sweep",
    ]
    assert lines[1] == "module 'overcommit' has no attribute 'nope'"


def test_the_readme_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(import overcommit\n.*?)```", readme, re.S)
    assert block, "the README has no Python example that starts with 'import overcommit'"
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    r = _python(block.group(1), tmp_path)
    assert r.returncode == 0, r.stderr
    saved = re.search(r"memory saved vs reporting_off, mean: (-?[0-9.]+) GiB", r.stdout)
    assert saved and float(saved.group(1)) > 0, r.stdout
    assert (tmp_path / "runs" / "quickstart").is_dir()
