"""Deployment files: Dockerfile, .dockerignore, Procfile, the App Platform spec."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest
import yaml
from conftest import ROOT

SECRET_ENVS = {
    "GENESYS_API_KEY",
    "GENESYS_AUDIOHOOK_CLIENT_SECRET",
    "OPENAI_API_KEY",
    "GENESYS_CLIENT_ID",
    "GENESYS_CLIENT_SECRET",
}


def dockerfile() -> list[str]:
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def instruction(name: str) -> list[str]:
    return [line[len(name) + 1 :] for line in dockerfile() if line.upper().startswith(name + " ")]


def test_dockerfile_is_slim_non_root_healthchecked_and_runs_the_entry_point():
    assert instruction("FROM")[0].startswith("python:3.1") and instruction("FROM")[0].endswith("-slim")
    users = instruction("USER")
    assert users and users[-1] not in ("root", "0")
    health = instruction("HEALTHCHECK")[0]
    assert "/health" in health and "PORT" in health
    assert instruction("CMD")[-1] == '["python", "oai_middleware.py"]'
    lines = dockerfile()
    copy_requirements = next(i for i, line in enumerate(lines) if line.startswith("COPY requirements.txt"))
    install = next(i for i, line in enumerate(lines) if "pip install -r requirements.txt" in line)
    copy_code = next(i for i, line in enumerate(lines) if line.startswith("COPY *.py"))
    assert copy_requirements < install < copy_code  # dependencies cached apart from code changes


def local_imports(module: str, seen: set[str]) -> set[str]:
    """The project's own modules that `module` needs, transitively."""
    path = ROOT / f"{module}.py"
    if module in seen or not path.exists():
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
        for name in names:
            local_imports(name.split(".")[0], seen)
    return seen


def test_the_image_carries_every_module_the_connector_imports_and_no_tests():
    needed = local_imports("oai_middleware", set())
    assert {"audiohook_server", "call_bridge", "openai_client", "genesys_actions", "config"} <= needed
    assert all((ROOT / f"{m}.py").exists() for m in needed)  # COPY *.py takes the top level only
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", "tests", ".git"):
        assert entry in ignored


def test_procfile_runs_the_entry_point():
    assert (ROOT / "Procfile").read_text().strip() == "web: python oai_middleware.py"


def test_app_platform_spec():
    spec = yaml.safe_load((ROOT / ".do" / "app.yaml").read_text())
    service = spec["services"][0]
    assert service["run_command"] == "python oai_middleware.py"
    assert service["http_port"] == 8080
    assert service["health_check"]["http_path"] == "/health"
    envs = {e["key"]: e for e in service["envs"]}
    for key in SECRET_ENVS:
        assert envs[key]["type"] == "SECRET" and "value" not in envs[key], key


def docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.skipif(not docker_engine(), reason="no Docker engine on this machine")
def test_the_image_builds():
    result = subprocess.run(
        ["docker", "build", "-q", "-t", "genesys-openai-connector:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
