"""The layering rules of the README's layout section, checked on every import statement of the project's code."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedrl_app", "strategies", "benchmarks")
BOTTOM = ("fedrl_app.protocol", "fedrl_app.agents", "fedrl_app.tasks", "fedrl_app.systems")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module a file imports, at any depth (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


MODULES = {module_name(p): project_imports(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offending(rule) -> list[str]:
    return sorted(f"{module} imports {imported}" for module, imports in MODULES.items() for imported in imports
                  if rule(module, imported))


def test_the_project_is_found():
    assert {"fedrl_app.server_app", "fedrl_app.client_app", "strategies.fedavg", "fedrl_app.protocol.keys"} <= set(MODULES)


def test_strategies_import_only_the_protocol_agents_and_tasks():
    assert offending(lambda m, i: within(m, "strategies") and within(i, "fedrl_app")
                     and not within(i, *BOTTOM)) == []


def test_only_the_server_layer_imports_strategies():
    # (benchmarks, above the app, may reuse a strategy helper)
    assert offending(lambda m, i: within(i, "strategies") and within(m, "fedrl_app")
                     and not within(m, "fedrl_app.server")) == []


def test_only_client_app_imports_a_client_module():
    assert offending(lambda m, i: within(i, "fedrl_app.client") and not within(
        m, "fedrl_app.client", "fedrl_app.client_app")) == []


def test_nothing_imports_the_apps():
    assert offending(lambda m, i: within(i, "fedrl_app.server_app", "fedrl_app.client_app")) == []


@pytest.mark.parametrize("bottom", BOTTOM)
def test_the_bottom_layer_imports_nothing_above_it(bottom):
    # wire formats, agents and tasks may use each other and the data locator (runtime.paths), nothing else
    assert offending(lambda m, i: within(m, bottom) and within(i, "fedrl_app", "strategies")
                     and not within(i, *BOTTOM, "fedrl_app.runtime.paths")) == []


def test_the_config_sits_below_servers_clients_and_strategies():
    assert offending(lambda m, i: m == "fedrl_app.config" and not within(i, *BOTTOM)) == []
    assert offending(lambda m, i: within(m, "strategies") and within(i, "fedrl_app.config")) == []


def test_server_and_client_layers_do_not_import_each_other():
    assert offending(lambda m, i: within(m, "fedrl_app.server") and within(i, "fedrl_app.client")) == []
    assert offending(lambda m, i: within(m, "fedrl_app.client") and within(i, "fedrl_app.server")) == []
