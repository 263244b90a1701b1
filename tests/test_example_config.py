"""`.env.local.example` lists every setting the README documents, grouped as the README groups
them, and loads: the file an operator copies is complete and right."""

from __future__ import annotations

import re

from conftest import ROOT

from config import CALL_KEY_NAMES, load_settings, read_environment

# README headings whose tables are settings, and the example file's group for each.
GROUPS = {
    "### Serving and Genesys": "Serving and Genesys",
    "### Model vendors and APIs": "Model vendors and APIs",
    "### Per call": "Per call",
    "### Call limits": "Call limits",
    "### Genesys Data Actions": "Genesys Data Actions",
    "### Remote MCP servers": "Remote MCP servers",
}
NAME = re.compile(r"`([A-Z][A-Z0-9_]+)`")


def readme_settings() -> dict[str, set[str]]:
    """Per group: the variables in the first column of its tables."""
    found: dict[str, set[str]] = {}
    group = None
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("#"):
            group = next((g for heading, g in GROUPS.items() if line.startswith(heading)), None)
            continue
        if group and line.startswith("| `"):
            first_column = line.split("|")[1]
            found.setdefault(group, set()).update(NAME.findall(first_column))
    return found


def example_settings() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    group = None
    for line in (ROOT / ".env.local.example").read_text().splitlines():
        heading = re.match(r"# --- (.+?) -", line)
        if heading:
            group = next((g for g in GROUPS.values() if heading.group(1).startswith(g)), heading.group(1))
            continue
        setting = re.match(r"#? ?([A-Z][A-Z0-9_]+)=", line)
        if setting and group:
            found.setdefault(group, set()).add(setting.group(1))
    return found


def test_every_documented_setting_is_in_the_example_under_its_readme_group():
    readme, example = readme_settings(), example_settings()
    assert set(readme) == set(GROUPS.values())
    for group, names in readme.items():
        assert names <= example.get(group, set()), (
            f"{group}: missing {sorted(names - example.get(group, set()))}"
        )


def test_every_example_setting_is_one_the_connector_reads():
    env = {"GENESYS_API_KEY": "k", "OPENAI_API_KEY": "sk"}
    known = {name for name, _ in load_settings(env).report} | CALL_KEY_NAMES
    for names in example_settings().values():
        assert names <= known, sorted(names - known)


def test_the_example_loads_once_its_placeholders_are_filled(tmp_path):
    text = (ROOT / ".env.local.example").read_text().replace("change-me", "filled-in")
    (tmp_path / ".env").write_text(text)
    settings = load_settings(dict(read_environment(tmp_path / ".env")) | {"PATH": ""})
    assert settings.placeholders == ()
    assert settings.call_config(None, {}).model == "gpt-realtime-2.1-mini"


def test_the_simulator_urls_are_ready_to_uncomment():
    text = (ROOT / ".env.local.example").read_text()
    assert "# OPENAI_REALTIME_URL=ws://127.0.0.1:8081/v1/realtime" in text
