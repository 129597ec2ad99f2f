"""The README's set-up section and CI must never drift apart: CI runs exactly what the README tells users."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_command(name: str) -> str:
    match = re.search(rf"^{name}='(.+)'$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
    assert match, f".ci/run defines no {name}"
    return match.group(1)


def test_readme_shows_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    for name in ("INSTALL", "TESTS"):
        assert _ci_command(name) in setup, f"README set-up section lacks CI's {name} command"
    assert "reid-accel train configs/synthetic.yaml" in setup
    assert setup.count("pip install") == 1, "the set-up section has exactly one install command"
