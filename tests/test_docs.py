"""The README and docs/ say only what the CLI does: every ``rdistill COMMAND ... --flag`` they show is a command
with that flag (the one vocabulary of README "Commands")."""
from __future__ import annotations

import re
from pathlib import Path

import typer

from relational_distill.cli import app

ROOT = Path(__file__).resolve().parent.parent
# one command line as the docs write it: `rdistill ...`, .venv/bin/rdistill ... or a line of a code block starting
# with it, up to its end (a backtick, a table's pipe or the line's end); prose ("another rdistill process") is not
COMMAND = re.compile(r"(?:(?<=[`/])|^[ \t]*)rdistill ([a-z][a-z-]*)((?:[^`|\n])*)", re.M)


def documented_flags() -> list[tuple[str, str, str]]:
    """(file, command, flag) for every flag written after ``rdistill COMMAND`` in the README and docs/."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n", " ", path.read_text())  # a shell line continued with a backslash is one line
        for match in COMMAND.finditer(text):
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2)):
                found.append((path.name, match.group(1), flag))
    return found


def test_every_documented_flag_exists():
    group = typer.main.get_command(app)
    commands = {name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
                for name, cmd in group.commands.items()}
    flags = documented_flags()
    assert len(flags) > 50  # the docs show many command lines; a broken pattern would find none
    wrong = sorted({(f, c, flag) for f, c, flag in flags if c in commands and flag not in commands[c] | {"--help"}})
    unknown = sorted({(f, c) for f, c, _ in flags if c not in commands})
    assert not wrong and not unknown, (wrong, unknown)
