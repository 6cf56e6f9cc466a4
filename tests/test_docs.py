"""Docs cannot drift: every CLI command and every config key is documented."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import click
import pytest

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


def _config_table() -> dict[str, list[str]]:
    """The README's configuration table (`| section | keys |` under `## Configuration`): section → keys.

    A key is a backticked word of the keys cell outside parentheses (those hold values or examples:
    `synchronous` (`full` / `normal`) lists the key `synchronous` only).
    """
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = section.split("\n| section | keys |\n", 1)[1].splitlines()
    table: dict[str, list[str]] = {}
    for line in lines[1:]:  # after the |---|---| line
        if not line.startswith("|"):
            break
        name_cell, keys_cell = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
        name = name_cell.strip("`").strip("[]")
        assert name not in table, f"README configuration table: [{name}] has two rows"
        while re.search(r"\([^()]*\)", keys_cell):  # nested parentheses, innermost first
            keys_cell = re.sub(r"\([^()]*\)", "", keys_cell)
        table[name] = re.findall(r"`([^`]+)`", keys_cell)
    return table


def test_every_config_key_is_in_the_readme_configuration_table() -> None:
    table = _config_table()
    defaults = config.Settings()
    expected = {
        name: [field.name for field in dataclasses.fields(getattr(defaults, attr))]
        for name, attr in config.SECTIONS.items()
    }
    expected["meters"] = [field.name for field in dataclasses.fields(config.MeterSpec)]  # [[meters]]
    for name, keys in expected.items():
        assert name in table, f"README configuration table: add a row for [{name}]"
        missing = [key for key in keys if key not in table[name]]
        assert missing == [], f"README configuration table, [{name}]: add {missing}"
        unknown = [key for key in table[name] if key not in keys]
        assert unknown == [], f"README configuration table, [{name}]: {unknown} are not keys of the section"
    unknown_sections = set(table) - set(expected)
    assert not unknown_sections, f"README configuration table: {unknown_sections} are not sections"


def test_the_configuration_table_check_notices_a_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check reads the table only: a key mentioned elsewhere in the README does not count.
    table = README.split("\n| section | keys |\n", 1)[1].split("\n\n", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith("| `[intake.http]`"))
    without_token = row.replace(", `token`", "")
    assert without_token != row and re.search(r"\btoken\b", README.replace(row, without_token))
    monkeypatch.setattr(sys.modules[__name__], "README", README.replace(row, without_token))
    with pytest.raises(AssertionError, match=r"\[intake.http\]: add \['token'\]"):
        test_every_config_key_is_in_the_readme_configuration_table()


def test_readme_has_exactly_two_fresh_machine_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", quick, re.S)
    assert len(blocks) == 2, "the quick start shows exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci, ".ci/run must run exactly the README's test command"


def test_the_one_check_command_runs_what_ci_runs() -> None:
    # CONTRIBUTING.md names `scripts/check` as the one command; it must not drift from CI or the README.
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    test_command = re.findall(r"```(?:sh|bash)\n(.*?)```", quick, re.S)[1].strip()
    check = (ROOT / "scripts" / "check").read_text()
    assert test_command in check, "scripts/check must run exactly the README's test command"
    assert ".venv/bin/mypy --strict agent tests" in check, "scripts/check type-checks agent and tests"
    assert "scripts/check lint types" in (ROOT / ".ci" / "run").read_text(), (
        ".ci/run must lint via scripts/check"
    )
    assert "`scripts/check`" in (ROOT / "CONTRIBUTING.md").read_text()


def test_every_design_note_a_file_refers_to_is_in_the_repository() -> None:
    # Docstrings and docs point at docs/*.md for rules that span modules; those notes must exist here.
    sources = [
        *ROOT.glob("agent/**/*.py"),
        *ROOT.glob("tests/**/*.py"),
        *ROOT.glob("*.md"),
        *ROOT.glob("docs/*.md"),
    ]
    referred = {
        (source.relative_to(ROOT), name)
        for source in sources
        for name in re.findall(r"\bdocs/([\w.-]+\.md)\b", source.read_text())
    }
    assert {name for _, name in referred} >= {"design.md", "dodo-ingest-contract.md"}
    missing = sorted((str(source), name) for source, name in referred if not (ROOT / "docs" / name).is_file())
    assert missing == [], f"these files refer to design notes that are not in docs/: {missing}"
