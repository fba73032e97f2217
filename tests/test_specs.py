"""One spec per dataset and per encoder (gmcert.data.specs, gmcert.encoders.specs): every
config option has one, its schema is the one registered, and the places that used to test names
(the encode stage, the preflight, the degrade stage's known law) read the spec's capabilities."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from conftest import CONFIGS, QUICK
from hydra.core.config_store import ConfigStore

from gmcert.config import register_configs
from gmcert.data import build_dataset
from gmcert.data.specs import DATASETS, dataset_spec
from gmcert.encoders import build_encoder
from gmcert.encoders.specs import ENCODERS, encoder_spec
from gmcert.preflight import check_inputs_present


def _schema_in_yaml(group: str, name: str) -> str:
    """The ``schema_*`` entry of ``configs/<group>/<name>.yaml``'s defaults list."""
    text = (CONFIGS / group / f"{name}.yaml").read_text()
    (schema,) = re.findall(r"^\s*-\s*schema_(\w+)\s*$", text, flags=re.MULTILINE)
    return schema


@pytest.mark.parametrize(("group", "registry"), [("dataset", DATASETS), ("encoder", ENCODERS)])
def test_every_config_option_has_one_spec_with_its_schema(group, registry):
    assert {p.stem for p in (CONFIGS / group).glob("*.yaml")} == set(registry)
    register_configs()
    stored = ConfigStore.instance().repo[group]
    for name, spec in registry.items():
        assert spec.name == name
        assert _schema_in_yaml(group, name) == spec.schema_name
        # the registered node is the spec's schema, with the option's name where it has one
        node = stored[f"schema_{spec.schema_name}.yaml"].node
        assert node._metadata.object_type is spec.schema


def test_capabilities_are_stated_not_read_from_names():
    identity = {name for name, spec in ENCODERS.items() if spec.identity}
    trained = {name for name, spec in ENCODERS.items() if spec.trained}
    pretrained = {name for name, spec in ENCODERS.items() if spec.pretrained}
    assert identity == {"identity"} and trained == {"lipschitz", "cnn"}
    assert pretrained == set(ENCODERS) - {"identity", "pca", *trained}
    # a pretrained encoder shares the pretrained schema; the others have their own
    assert {ENCODERS[n].schema_name for n in pretrained} == {"pretrained"}
    assert all(ENCODERS[n].schema_name == n for n in set(ENCODERS) - pretrained)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'digit'; choose one of \[.*'digits'"):
        dataset_spec("digit")
    with pytest.raises(ValueError, match=r"unknown dataset 'digit'"):
        build_dataset("digit")
    with pytest.raises(ValueError, match=r"unknown encoder 'pcaa'; choose one of \[.*'pca'"):
        encoder_spec("pcaa")
    with pytest.raises(ValueError, match=r"unknown encoder 'pcaa'"):
        build_encoder("pcaa")


def _missing(what):
    def check(**options):
        raise FileNotFoundError(f"{what} of {options['name']} is missing")

    return check


def test_the_preflight_runs_each_spec_check_and_names_every_miss(make_cfg, monkeypatch):
    cfg = make_cfg("encoder=pca")
    check_inputs_present(cfg)  # digits and pca: nothing on disk to look for
    monkeypatch.setitem(DATASETS, "digits", replace(DATASETS["digits"], preflight=_missing("data")))
    monkeypatch.setitem(ENCODERS, "pca", replace(ENCODERS["pca"], preflight=_missing("weights")))
    with pytest.raises(FileNotFoundError) as err:
        check_inputs_present(cfg)
    assert "2 inputs of this run are missing" in str(err.value)
    assert "data of digits is missing" in str(err.value)
    assert "weights of pca is missing" in str(err.value)


@pytest.mark.e2e
def test_the_known_law_follows_the_identity_capability(make_cfg, monkeypatch):
    """The degrade stage uses the data's exact law only for an encoder whose spec says it is
    the identity: the same run with the flag cleared reports no true eps."""
    from gmcert.pipeline import run

    monkeypatch.setitem(ENCODERS, "identity", replace(ENCODERS["identity"], identity=False))
    cfg = make_cfg(
        *QUICK,
        "dataset=synthetic",
        "dataset.n_train=200",
        "dataset.n_test=50",
        "certify.population_samples=2000",
        "divergence.eps=0.1",
        "divergence.truth_samples=2000",
    )
    divergence = run(cfg)["divergence"]
    # the bound was evaluated (the stage did not stop before the known law could be used) ...
    assert divergence["eps_used"] == 0.1
    # ... without the data's law: the encoder is not the identity as far as its spec says
    assert "eps_true" not in divergence


def test_denoiser_specs_state_what_they_read_and_check(tmp_path, caplog):
    from gmcert.denoisers import DENOISERS, check_denoiser_options, check_denoiser_present

    assert {p.stem for p in (CONFIGS / "denoiser").glob("*.yaml")} == set(DENOISERS)
    with caplog.at_level("WARNING", logger="gmcert.denoisers"):
        check_denoiser_options({"name": "custom", "builder": "a.b:c", "timestep": 10})
    assert "denoiser.timestep is set but denoiser=custom does not read it" in caplog.text
    check_denoiser_present({"name": "none"})
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt: no such folder or file"):
        check_denoiser_present({"name": "custom", "builder": "a.b:c", "weights": missing})
    with pytest.raises(ValueError, match="denoiser=diffusion needs denoiser.weights"):
        check_denoiser_present({"name": "diffusion"})
