"""Settings: each declared once in `ledger/config.py`, in its process's section; the README's table
is generated from the declarations and must be current; no other runtime module reads the
environment. Pure: no database, no broker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ledger import config
from ledger.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
# The server's packages. `client` is left out: it depends on `schemas` alone, so it cannot read
# `ledger.config`, and its command (`ledger import`) has options of its own (LEDGER_API_URL, LEDGER_TOKEN).
SERVER_PACKAGES = ("schemas", "ledger", "projector", "webhooks", "proofs", "audit", "api", "cli")


def readme_table() -> str:
    """The table of variables under the README's `## Configuration`."""
    text = (ROOT / "README.md").read_text()
    after_heading = text[text.index("\n## Configuration\n"):].split("\n\n")
    table = next(block for block in after_heading if block.startswith("|"))
    return table + "\n"


def test_the_readme_table_is_generated_from_the_declarations():
    assert readme_table() == config.markdown_table(), "regenerate it: python -m ledger.config"


def test_every_setting_is_declared_with_a_meaning_and_every_variable_once():
    variables = [config.declaration(field).variable for _, field in config.declared()]
    named = [variable for variable in variables if variable is not None]
    assert len(named) == len(set(named))
    assert all(variable.startswith("LEDGER_") for variable in named)
    assert all(config.declaration(field).meaning for _, field in config.declared())


@pytest.mark.parametrize("section, field", [(s, f) for s, f in config.declared() if config.declaration(f).variable],
                         ids=lambda item: getattr(item, "name", item))
def test_the_default_the_readme_shows_is_the_default_read_from_the_environment(section, field):
    shown = config.shown_default(field)
    text = shown.split(" ")[0].strip("`")
    if shown.startswith("unset"):
        environ = {}
    else:
        environ = {config.declaration(field).variable: text}
    assert getattr(getattr(Settings.from_env(environ), section), field.name) == field.default


def test_a_variable_overrides_its_default_and_an_override_in_code_wins_over_both():
    environ = {"LEDGER_BATCH_MAX": "64", "LEDGER_WEBHOOK_ALLOW_PRIVATE": "yes", "LEDGER_METRICS_PORT": "9100"}
    settings = Settings.from_env(environ, committer={"batch_max": 32})
    assert settings.committer.batch_max == 32
    assert (settings.webhooks.allow_private, settings.http.metrics_port) == (True, 9100)
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("environ, message", [
    ({"LEDGER_BATCH_MAX": "abc"}, "LEDGER_BATCH_MAX='abc' is not a whole number"),
    ({"LEDGER_RATE_PER_S": "fast"}, "LEDGER_RATE_PER_S='fast' is not a number"),
    ({"LEDGER_TREE_FOLLOWER": "maybe"}, "LEDGER_TREE_FOLLOWER='maybe' is not one of 1, true, yes, 0, false, no"),
    ({"LEDGER_LOG_FORMAT": "xml"}, "LEDGER_LOG_FORMAT='xml' is not one of json, text"),
    ({"LEDGER_LOG_LEVEL": "loud"}, "LEDGER_LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ({"LEDGER_WEBHOOK_KEY": "short"}, "LEDGER_WEBHOOK_KEY: key 1 is not a Fernet key (32 url-safe base64 bytes)"),
    ({"LEDGER_HTTP_HOST": " "}, "LEDGER_HTTP_HOST=' ' must not be empty"),
])
def test_a_bad_variable_is_a_config_error_that_names_it(environ, message):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(environ)
    assert str(raised.value) == message


def test_a_section_built_in_code_is_checked_like_one_read_from_the_environment():
    with pytest.raises(ConfigError, match=r"^LEDGER_WAITERS_MAX=0 is out of range 1\.\.100000$"):
        config.Api(waiters_max=0)
    with pytest.raises(ConfigError, match=r"^LEDGER_HTTP_REUSE_PORT=1 is not true or false$"):
        Settings().replace(http={"reuse_port": 1})


def test_a_section_that_does_not_exist_is_refused():
    with pytest.raises(TypeError, match="no settings section named listener"):
        Settings().replace(listener={"port": 1})


def test_no_server_module_but_the_settings_reads_the_environment():
    readers = []
    for path in _runtime_modules():
        if path == ROOT / "ledger" / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if _reads_environment(node):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert readers == []


def _runtime_modules():
    for package in SERVER_PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _reads_environment(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    if isinstance(node, ast.ImportFrom) and node.module == "os":
        return any(alias.name in ("environ", "getenv", "environb") for alias in node.names)
    return False
