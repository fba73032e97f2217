"""What a new user sees first: ``gmcert-run --help`` names the program and lists only the
options one can choose."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import gmcert_run, hydra_config

from gmcert.cli import config_choices


def test_help_names_the_program_and_lists_choosable_options_only():
    cfg = hydra_config()
    assert cfg.hydra.help.app_name == "gmcert-run"
    text = cfg.hydra.help.template  # resolves ${gmcert_choices:}
    assert text.startswith("gmcert-run: ")
    choices = dict(line.split(": ", 1) for line in config_choices().splitlines())
    assert "schema_" not in text and "schema_" not in config_choices()
    assert {"fashion_mnist", "digits", "arrays"} <= set(choices["dataset"].split(", "))
    assert "lipschitz" in choices["encoder"].split(", ")
    assert choices["hydra/launcher"] == "site_slurm"
    for group, options in choices.items():
        assert f"{group}: {options}" in text


@pytest.mark.slow
def test_help_from_the_command_line():
    proc = gmcert_run("--help", timeout=120)
    assert proc.stdout.startswith("gmcert-run: ") and "schema_" not in proc.stdout
    assert "powered by Hydra" not in proc.stdout and "cli " not in proc.stdout


def test_the_package_imports_its_api_on_first_use():
    """``import gmcert`` (and the config the CLI reads first) loads no certifier, estimator or
    torch; each public name still resolves to its implementation."""
    code = (
        "import sys, gmcert, gmcert.config\n"
        "print(sorted(m for m in sys.modules if m.startswith('gmcert.')), 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    modules, torch_loaded = proc.stdout.rsplit(" ", 1)
    assert torch_loaded.strip() == "False", proc.stdout + proc.stderr
    assert not {"gmcert.pipeline", "gmcert.eps", "gmcert.models", "gmcert.report"} & set(
        eval(modules)
    )
    import gmcert
    from gmcert.certify.linear import LinearCertifier
    from gmcert.pipeline import run

    assert gmcert.LinearCertifier is LinearCertifier and gmcert.run is run
    assert set(gmcert.__all__) <= set(dir(gmcert))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        gmcert.nothing  # noqa: B018
