"""The README's quick start and .ci/run must not drift apart."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2, (
        f"the quick start must be two commands (main job, tests), found {commands}")
    assert commands[0].startswith("minilens lens "), (
        "the first quick-start command runs the lens on the shipped weights")


def test_ci_runs_the_readme_test_command():
    test_command = quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_commands = [line.strip() for line in ci.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    assert ci_commands[-1] == test_command, (
        f".ci/run must end by running the README's test command {test_command!r}, "
        f"but runs {ci_commands[-1]!r}")
