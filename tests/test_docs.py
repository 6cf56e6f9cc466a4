"""Docs cannot drift: every CLI command and every config key is documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from agent import config
from agent.cli import cli

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "dodo-outbox") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        full = f"{prefix} {name}"
        found.append((full, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, full))
    return found


def test_every_command_is_in_the_readme() -> None:
    missing = [name for name, _ in _commands(cli) if name not in README]
    assert missing == [], f"document these commands in README.md: {missing}"


def test_every_command_has_help_with_an_example() -> None:
    for name, command in _commands(cli):
        if isinstance(command, click.Group):
            assert command.help, f"{name} has no help"
            continue
        assert command.help and "Example" in command.help, f"{name}: help needs an example"


def test_every_config_key_is_in_the_readme() -> None:
    defaults = config.Settings()
    for name, attr in config.SECTIONS.items():
        assert f"[{name}]" in README, f"section [{name}] missing from README"
        for field in dataclasses.fields(getattr(defaults, attr)):
            assert re.search(rf"\b{field.name}\b", README), f"[{name}] {field.name} missing from README"


def test_readme_has_exactly_two_fresh_machine_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", quick, re.S)
    assert len(blocks) == 2, "the quick start shows exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, ".ci/run must run exactly the README's test command"
