"""The documentation site builds cleanly and its reference pages match the code.

* ``mkdocs build --strict`` succeeds (warnings are errors: broken links or anchors,
  docstrings that griffe cannot parse, cross-references to renamed objects).
* The config reference lists every key of every config dataclass, with the right
  type and default, and nothing else.
* The CLI reference lists every command and flag of ``pyro-vae``, with the right
  defaults, and nothing else.
* Registered names (priors with their settings, likelihoods, activations, datasets,
  binarization modes, objectives, schedules, baselines) appear on their pages, and
  every module has an API page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# What `mkdocs build` needs besides mkdocs itself (import name -> pip package).
BUILD_PLUGINS = {
    "material": "mkdocs-material",
    "mkdocstrings": "mkdocstrings[python]",
    "mkdocstrings_handlers.python": "mkdocstrings[python]",
    "pymdownx": "pymdown-extensions",
}


# --------------------------------------------------------------------------- helpers


def _cells(row: str) -> list[str]:
    """Split a Markdown table row into cells; pipes inside `code` or escaped do not split."""
    cells, current, in_code, i = [], "", False, 0
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    while i < len(row):
        ch = row[i]
        if ch == "\\" and i + 1 < len(row) and row[i + 1] == "|":
            current += "|"
            i += 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += ch
        i += 1
    cells.append(current.strip())
    return cells


def _table_rows(lines: list[str]) -> list[list[str]]:
    """Body rows of every table in ``lines`` (header and separator rows dropped)."""
    rows, previous_was_table = [], False
    for line in lines:
        is_table = line.lstrip().startswith("|")
        if is_table:
            cells = _cells(line)
            is_separator = all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c)
            if previous_was_table and not is_separator:
                rows.append(cells)
            elif not previous_was_table:
                pass  # header row
        previous_was_table = is_table
    return rows


def _sections(path: Path, level: str = "##") -> dict[str, list[str]]:
    """Heading text -> the lines under it, up to the next heading of the same level."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(level + " "):
            current = line[len(level) + 1 :].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def _unquote(cell: str) -> str:
    cell = cell.strip()
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == "`" else cell


def _type_name(annotation: typing.Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if typing.get_origin(annotation) is not None or not isinstance(annotation, type):
        return str(annotation)
    return annotation.__name__


def _default(f: dataclasses.Field) -> typing.Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


# --------------------------------------------------------------------------- the build


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def test_site_builds_strict(tmp_path):
    if not _importable("mkdocs"):
        pytest.skip("mkdocs is not installed: pip install mkdocs mkdocs-material 'mkdocstrings[python]'")
    missing = sorted({pkg for mod, pkg in BUILD_PLUGINS.items() if not _importable(mod)})
    if missing:
        pytest.fail(f"mkdocs is installed but the docs build also needs: {', '.join(missing)}")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "theory/elbo/index.html", "guide/config/index.html", "api/models/vae/index.html", "guide/own_model/index.html",
                 "benchmarks/index.html"):
        assert (site / page).is_file(), f"{page} missing from the built site"
    api = (site / "api" / "models" / "vae" / "index.html").read_text(encoding="utf-8")
    assert 'id="pyro_vae.models.vae.VAE"' in api, "mkdocstrings rendered no VAE class on the API page"


# --------------------------------------------------------------------------- config reference


def test_config_reference_matches_dataclasses():
    from pyro_vae.runs import config

    sections = _sections(DOCS / "guide" / "config.md")
    classes = [config.Config, config.DataConfig, config.ModelConfig, config.NetConfig, config.TrainConfig]
    for cls in classes:
        heads = [h for h in sections if f"`{cls.__name__}`" in h]
        assert len(heads) == 1, f"docs/guide/config.md needs exactly one '## ...`{cls.__name__}`' section, found {heads}"
        rows = {_unquote(r[0]): r for r in _table_rows(sections[heads[0]]) if r and r[0].startswith("`")}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(rows) == set(fields), (
            f"{cls.__name__}: config reference keys differ from the dataclass; "
            f"undocumented: {sorted(set(fields) - set(rows))}, documented but gone: {sorted(set(rows) - set(fields))}"
        )
        for name, f in fields.items():
            row = rows[name]
            assert len(row) >= 4, f"{cls.__name__}.{name}: row needs key | type | default | meaning, got {row}"
            expected_type = _type_name(f.type)
            assert _unquote(row[1]) == expected_type, f"{cls.__name__}.{name}: documented type {row[1]!r}, code says {expected_type!r}"
            assert row[3], f"{cls.__name__}.{name}: meaning is empty"
            if dataclasses.is_dataclass(_default(f)):
                continue  # a nested section, documented under its own heading
            documented = yaml.safe_load(_unquote(row[2]))
            assert documented == _default(f), f"{cls.__name__}.{name}: documented default {row[2]!r}, code says {_default(f)!r}"


# --------------------------------------------------------------------------- CLI reference


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from pyro_vae.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_cli_reference_matches_parser():
    sections = _sections(DOCS / "guide" / "cli.md")
    documented_commands = {}
    for head, lines in sections.items():
        m = re.fullmatch(r"`pyro-vae ([a-z-]+)`", head)
        if m:
            documented_commands[m.group(1)] = lines
    commands = _subcommands()
    assert set(documented_commands) == set(commands), (
        f"CLI reference commands differ from the parser: undocumented {sorted(set(commands) - set(documented_commands))}, "
        f"documented but gone {sorted(set(documented_commands) - set(commands))}"
    )
    for name, sub in commands.items():
        rows = _table_rows(documented_commands[name])
        documented: dict[str, list[str]] = {}
        for row in rows:
            first = _unquote(row[0]).split()
            if not first:
                continue
            token = first[0]
            if token.startswith("--") or re.fullmatch(r"[A-Z][A-Z_]*", token):
                documented[token] = row
        expected: dict[str, argparse.Action] = {}
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if action.option_strings:
                longs = [o for o in action.option_strings if o.startswith("--")]
                expected[longs[0] if longs else action.option_strings[0]] = action
            else:
                expected[action.dest.upper()] = action
        assert set(documented) == set(expected), (
            f"pyro-vae {name}: documented flags differ from the parser; undocumented {sorted(set(expected) - set(documented))}, "
            f"documented but gone {sorted(set(documented) - set(expected))}"
        )
        for flag, action in expected.items():
            row = documented[flag]
            assert len(row) >= 3 and row[2], f"pyro-vae {name} {flag}: row needs flag | default | meaning"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"`{action.default}`" in row[1], (
                    f"pyro-vae {name} {flag}: parser default is {action.default!r}, documented default {row[1]!r}"
                )


# --------------------------------------------------------------------------- registries and API pages


def _signature(name: str, fn: typing.Callable) -> str:
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return f"{name}({', '.join(f'{p.name}={p.default!r}' for p in params)})" if params else name


def test_registered_names_are_documented():
    from pyro_vae.baselines.registry import BASELINES
    from pyro_vae.runs.config import LR_SCHEDULES, OBJECTIVES
    from pyro_vae.data.transforms import BINARIZE_MODES
    from pyro_vae.data.datasets import DATASETS
    from pyro_vae.models.likelihoods import LIKELIHOODS
    from pyro_vae.models.nets import ACTIVATIONS, NETS
    from pyro_vae.models.priors import PRIORS

    models = (DOCS / "guide" / "models.md").read_text(encoding="utf-8")
    for registry in (PRIORS, LIKELIHOODS):
        for name, fn in registry.items():
            sig = _signature(name, fn)
            assert f"| `{sig}` |" in models, f"docs/guide/models.md: no table row for `{sig}`"
    pages = {
        "guide/models.md": list(ACTIVATIONS) + list(NETS),
        "guide/config.md": list(ACTIVATIONS) + list(OBJECTIVES) + list(LR_SCHEDULES) + list(BINARIZE_MODES) + list(DATASETS),
        "guide/data.md": list(DATASETS) + list(BINARIZE_MODES),
        "guide/baselines.md": list(BASELINES),
    }
    for page, names in pages.items():
        text = (DOCS / page).read_text(encoding="utf-8")
        missing = [n for n in names if f"`{n}`" not in text]
        assert not missing, f"docs/{page} does not mention {missing}"


def test_every_module_has_an_api_page():
    """docs/api mirrors the package: pyro_vae/<layer>/<module>.py has docs/api/<layer>/<module>.md, in the nav."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    flat = repr(nav)
    package = ROOT / "pyro_vae"
    modules = sorted(p.relative_to(package).with_suffix("").as_posix() for p in package.rglob("*.py")
                     if not p.stem.startswith("_"))
    assert len(modules) > 30, "the package was not found"
    for module in modules:
        page = DOCS / "api" / f"{module}.md"
        dotted = "pyro_vae." + module.replace("/", ".")
        assert page.is_file(), f"pyro_vae/{module}.py has no API page docs/api/{module}.md"
        assert f"::: {dotted}" in page.read_text(encoding="utf-8"), f"docs/api/{module}.md lacks '::: {dotted}'"
        assert f"api/{module}.md" in flat, f"mkdocs.yml nav lacks api/{module}.md"
    for page in (DOCS / "api").rglob("*.md"):
        name = page.relative_to(DOCS / "api").with_suffix("").as_posix()
        if name != "index":
            assert name in modules, f"docs/api/{name}.md documents a module that no longer exists"
