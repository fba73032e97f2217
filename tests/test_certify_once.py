"""Certify once, evaluate many times: runs that differ only in evaluation options reuse the
certified predictions (the prediction cache, or a run folder named by
``certify.predictions_from``), and write the tables a run that certified would write."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import QUICK, compose_config, gmcert_run

import gmcert.pipeline
from gmcert.certify.reuse import option_changes, prediction_options
from gmcert.cli import reevaluate_args
from gmcert.pipeline import run
from gmcert.report.sweep import report

BASE = [*QUICK, "certify.population_samples=2000"]


@pytest.fixture
def calls(monkeypatch):
    """How many points each method's certifier was asked for, across the test's runs."""
    counted: dict[str, int] = {}
    build = gmcert.pipeline.build_methods

    def counting_build(names, inputs):
        methods = build(names, inputs)
        for method in methods:
            certify = method.certify

            def counted_certify(rows, certify=certify, name=method.name):
                counted[name] = counted.get(name, 0) + len(rows)
                return certify(rows)

            method.certify = counted_certify
        return methods

    monkeypatch.setattr(gmcert.pipeline, "build_methods", counting_build)
    return counted


def run_in(tmp_path: Path, folder: str, *overrides: str):
    cfg = compose_config(tmp_path, [*BASE, *overrides])
    cfg.paths.output_dir = str(tmp_path / folder)
    return run(cfg), tmp_path / folder


@pytest.mark.e2e
def test_a_sweep_over_evaluation_options_certifies_once(tmp_path, calls):
    _, first = run_in(tmp_path, "first")
    assert calls == {"closed_form": 360}
    sweep = {
        "eps_0.1": ["divergence.eps=0.1"],
        "eps_1": ["divergence.eps=1.0"],
        "radii": ["certify.radii=[0.0,0.3,0.6]"],
        "alpha": ["certify.ci_alpha=0.01"],
        "attacked": ["attack.enabled=true"],
        "same": [],
    }
    for folder, overrides in sweep.items():
        metrics, out = run_in(tmp_path, folder, *overrides)
        assert calls == {"closed_form": 360}, folder  # not one point certified again
        assert metrics["throughput"]["predictions_reused"] == 360
        assert metrics["throughput"]["certify_points_per_second"] is None
        assert (out / "predictions.csv").read_bytes() == (first / "predictions.csv").read_bytes()
    same = tmp_path / "same" / "certified_accuracy.csv"
    assert same.read_bytes() == (first / "certified_accuracy.csv").read_bytes()


@pytest.mark.e2e
def test_a_prediction_option_or_the_cache_turned_off_certifies_again(tmp_path, calls):
    run_in(tmp_path, "first")
    others = [
        "certify.norm=linf",
        "mixture.shrinkage=0.5",
        "cache.enabled=false",
        "cache.force=true",
    ]
    for override in others:
        run_in(tmp_path, override.replace("=", "_"), override)
    assert calls == {"closed_form": (1 + len(others)) * 360}


@pytest.mark.e2e
def test_a_split_run_fills_the_cache_for_the_unsplit_one(tmp_path, calls):
    for shard in range(2):
        run_in(tmp_path, f"part{shard}", "certify.shards=2", f"certify.shard={shard}")
    _, whole = run_in(tmp_path, "whole")
    assert calls == {"closed_form": 360}
    parts = [(tmp_path / f"part{i}" / "predictions.csv").read_text() for i in range(2)]
    rows = parts[0] + parts[1].split("\n", 1)[1]
    assert (whole / "predictions.csv").read_text() == rows


def entry_log(tmp_path: Path) -> Path:
    (log,) = (tmp_path / "cache" / "predictions").glob("*/predictions.csv")
    return log


@pytest.mark.e2e
def test_a_tampered_cache_entry_is_certified_again_never_used(tmp_path, calls):
    _, first = run_in(tmp_path, "first")
    log = entry_log(tmp_path)
    lines = log.read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[4] = "1000.0"  # a forged latent radius
    log.write_text(lines[0] + ",".join(fields) + "".join(lines[2:]))
    _, second = run_in(tmp_path, "second")
    assert calls == {"closed_form": 2 * 360}
    assert (second / "predictions.csv").read_text().split("\n")[1].split(",")[:5] == (
        first / "predictions.csv"
    ).read_text().split("\n")[1].split(",")[:5]
    assert "1000.0" not in entry_log(tmp_path).read_text()  # the entry was rebuilt


@pytest.mark.parametrize("damage", ["meta_list", "meta_missing", "header", "truncated"])
@pytest.mark.e2e
def test_a_damaged_cache_entry_is_certified_again(tmp_path, calls, damage):
    run_in(tmp_path, "first")
    log = entry_log(tmp_path)
    meta = log.parent / "meta.json"
    if damage == "meta_list":
        meta.write_text(json.dumps([1, 2]))
    elif damage == "meta_missing":
        meta.unlink()
    elif damage == "header":
        log.write_text("a,b\n1,2\n")
    else:
        log.write_text(log.read_text()[:-7])
    _, second = run_in(tmp_path, "second")
    assert calls == {"closed_form": 2 * 360}
    assert len((second / "predictions.csv").read_text().splitlines()) == 361


@pytest.mark.e2e
def test_a_run_folder_is_evaluated_again_from_its_own_predictions(tmp_path, calls):
    _, first = run_in(tmp_path, "first")
    metrics, again = run_in(
        tmp_path,
        "again",
        f"certify.predictions_from={first}",
        "cache.enabled=false",  # so the rows can only come from the folder
        "certify.radii=[0.0,0.2]",
        "divergence.eps=0.5",
    )
    assert calls == {"closed_form": 360}
    assert metrics["throughput"]["predictions_reused"] == 360
    assert (again / "predictions.csv").read_bytes() == (first / "predictions.csv").read_bytes()
    assert "bound_at_eps" in (again / "certified_accuracy.csv").read_text()


@pytest.mark.e2e
def test_a_folder_with_other_prediction_options_is_refused_before_any_stage(tmp_path, calls):
    _, first = run_in(tmp_path, "first")
    with pytest.raises(ValueError, match=r"certify.norm: 'l2' -> 'linf'"):
        run_in(tmp_path, "again", f"certify.predictions_from={first}", "certify.norm=linf")
    assert not (tmp_path / "again" / "predictions.csv").exists()


@pytest.mark.e2e
def test_a_folder_of_other_data_is_refused(tmp_path, calls):
    _, first = run_in(tmp_path, "first")
    (first / "prediction_key.txt").write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="other data, latents"):
        run_in(tmp_path, "again", f"certify.predictions_from={first}")
    (first / "prediction_key.txt").unlink()
    with pytest.raises(ValueError, match="prediction_key.txt"):
        run_in(tmp_path, "third", f"certify.predictions_from={first}")
    with pytest.raises(ValueError, match="not a run folder"):
        run_in(tmp_path, "fourth", f"certify.predictions_from={tmp_path / 'nowhere'}")


@pytest.mark.e2e
def test_a_resume_with_other_evaluation_options_names_the_reevaluate_command(tmp_path):
    _, first = run_in(tmp_path, "first")
    with pytest.raises(ValueError, match="only its evaluation options differ: `gmcert-reevaluate"):
        run_in(tmp_path, "first", "certify.radii=[0.0,0.7]")
    with pytest.raises(ValueError, match="different configuration; resume") as refused:
        run_in(tmp_path, "first", "certify.norm=linf")
    assert "reevaluate" not in str(refused.value)


def test_prediction_options_leave_out_exactly_the_evaluation_options():
    base = compose_config(Path("/tmp"), BASE)
    evaluation = compose_config(
        Path("/elsewhere"),
        [
            *BASE,
            "certify.radii=[0.5]",
            "certify.ci_alpha=0.2",
            "certify.population_samples=10",
            "certify.smoothing_skip=7",
            "certify.shards=3",
            "certify.shard=1",
            "divergence.eps=3",
            "attack.steps=3",
            "cache.force=true",
        ],
    )
    assert option_changes(prediction_options(base), prediction_options(evaluation)) == []
    for override in ["certify.n=7", "certify.dtype=float32", "seed=1", "mixture.rank=3"]:
        other = compose_config(Path("/tmp"), [*BASE, override])
        assert option_changes(prediction_options(base), prediction_options(other)), override


def write_run_folder(folder: Path, overrides: list[str]) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides) or "[]\n"
    )
    (folder / "predictions.csv").write_text("method\n")
    return folder


def test_reevaluate_args_keep_the_run_and_replace_what_is_given(tmp_path):
    folder = write_run_folder(
        tmp_path / "my run's folder",
        ["certify=closed_form", "certify.radii=[0,1]", "hydra.run.dir=/old"],
    )
    args = reevaluate_args(folder, ["certify.radii=[0,2]", "divergence.eps=0.1"])
    assert args[:3] == ["certify=closed_form", "certify.radii=[0,2]", "divergence.eps=0.1"]
    assert args[3] == f"certify.predictions_from='{tmp_path}/my run\\'s folder'"
    assert args[4].startswith(f"hydra.run.dir='{tmp_path}/my run\\'s folder-reevaluated-")
    assert not any("/old" in a for a in args)


def test_reevaluate_refuses_a_non_run_folder_and_a_full_output_folder(tmp_path):
    with pytest.raises(ValueError, match="not a gmcert run folder"):
        reevaluate_args(tmp_path, [])
    folder = write_run_folder(tmp_path / "run", ["certify=closed_form"])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ValueError, match="never write over"):
        reevaluate_args(folder, [], tmp_path / "taken")
    (folder / ".hydra" / "overrides.yaml").write_text("a: mapping\n")
    with pytest.raises(ValueError, match="no list of overrides"):
        reevaluate_args(folder, [])


@pytest.mark.slow
@pytest.mark.e2e
def test_gmcert_reevaluate_writes_beside_the_run_and_never_over_it(tmp_path):
    base = [f"{o}" for o in BASE] + [f"paths.cache_dir={tmp_path / 'cache'}"]
    first = tmp_path / "first"
    gmcert_run(*base, f"hydra.run.dir={first}")
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    gmcert_run(first, "certify.radii=[0.0,0.4]", program="gmcert-reevaluate")
    (again,) = tmp_path.glob("first-reevaluated-*")
    assert (again / "predictions.csv").read_bytes() == before["predictions.csv"]
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics["throughput"]["predictions_reused"] == 360
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before
    refused = gmcert_run(first, "certify.norm=linf", program="gmcert-reevaluate", status=2)
    assert "certify.norm" in refused.stderr


@pytest.mark.e2e
def test_a_sweep_over_eps_is_reported_as_one_bound_against_eps(tmp_path, calls):
    for eps in ("0", "0.1", "1.0"):
        run_in(tmp_path, f"sweep/eps_{eps}", f"divergence.eps={eps}")
    run_in(tmp_path, "sweep/other_norm", "divergence.eps=0.1", "certify.norm=linf")
    result = report([tmp_path / "sweep"], tmp_path / "report")
    (written,) = result["eps_sweeps"]  # the linf run is no part of the l2 sweep
    sweep = pd.read_csv(tmp_path / "report" / "bound_vs_eps.csv")
    assert sorted(sweep["eps"].unique()) == [0.0, 0.1, 1.0]
    radii = sorted(sweep["radius"].unique())
    assert len(sweep) == 3 * len(radii)
    for _, rows in sweep.groupby("radius"):
        assert rows["certified_accuracy"].nunique() == 1  # certified once, the same numbers
        assert rows.sort_values("eps")["bound_at_eps"].is_monotonic_decreasing
    table = pd.read_csv(tmp_path / "sweep" / "eps_0.1" / "certified_accuracy.csv")
    at = sweep[sweep["eps"] == 0.1].set_index("radius")["bound_at_eps"]
    assert at.to_numpy() == pytest.approx(table.set_index("radius")["bound_at_eps"].to_numpy())
    text = written.read_text()
    assert "| 0.1 |" in text and "| measured |" in text
    assert (tmp_path / "report" / "bound_vs_eps.png").stat().st_size > 0


@pytest.mark.e2e
def test_runs_with_one_eps_make_no_eps_sweep(tmp_path, calls):
    run_in(tmp_path, "runs/a", "divergence.eps=0.1")
    run_in(tmp_path, "runs/b", "divergence.eps=0.1", "certify.radii=[0.0,0.3]")
    assert report([tmp_path / "runs"], tmp_path / "report")["eps_sweeps"] == []
    assert not (tmp_path / "report" / "bound_vs_eps.csv").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_multirun_over_eps_certifies_once_and_ends_with_the_bound_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = gmcert_run(
        "-m",
        *BASE,
        "divergence.eps=0,0.01,0.1,1",
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    reused = [
        json.loads((sweep / str(job) / "metrics.json").read_text())["throughput"][
            "predictions_reused"
        ]
        for job in range(4)
    ]
    assert reused == [0, 360, 360, 360]
    assert "the certified-accuracy bound at each eps" in proc.stdout
    assert pd.read_csv(sweep / "bound_vs_eps.csv")["eps"].nunique() == 4


def test_the_attack_runs_once_per_prediction_key_and_attack_options(tmp_path, monkeypatch):
    attacked = []
    attack_all = gmcert.pipeline.attack_all

    def counting_attack_all(*args, **kwargs):
        attacked.append(1)
        return attack_all(*args, **kwargs)

    monkeypatch.setattr(gmcert.pipeline, "attack_all", counting_attack_all)
    _, first = run_in(tmp_path, "first", "attack.enabled=true")
    _, again = run_in(tmp_path, "again", "attack.enabled=true", "divergence.eps=0.1")
    assert len(attacked) == 1
    for name in ("predictions.csv",):
        assert (again / name).read_bytes() == (first / name).read_bytes()
    tables = [pd.read_csv(f / "certified_accuracy.csv") for f in (first, again)]
    pd.testing.assert_series_equal(
        tables[0]["empirical_robust_accuracy"], tables[1]["empirical_robust_accuracy"]
    )
    metrics = [json.loads((f / "metrics.json").read_text())["attack"] for f in (first, again)]
    assert metrics[0] == metrics[1]
    (entry,) = (tmp_path / "cache" / "attacks").iterdir()
    run_in(tmp_path, "more_steps", "attack.enabled=true", "attack.steps=7")
    assert len(attacked) == 2  # another attack option: attacked again
    results = entry / "results.json"
    results.write_text(results.read_text().replace('"seconds"', '"second"'))
    run_in(tmp_path, "after_damage", "attack.enabled=true")
    run_in(tmp_path, "after_damage_2", "attack.enabled=true", "attack.steps=7")
    assert len(attacked) == 3  # the damaged entry only: attacked again, the other reused


def test_an_unsound_attack_result_is_reported_again_from_the_cache(tmp_path):
    from gmcert.attack.cache import cached_attacks
    from gmcert.attack.results import Attacked

    beaten = Attacked(
        radius=pd.Series([0.5, float("inf")], index=pd.Index([3, 9], name="index"), name="r"),
        violations=[{"method": "closed_form", "index": 3, "perturbation": [0.1, float("nan")]}],
        seconds=1.5,
        norm="l2",
        space="input",
        method="closed_form",
    )
    stored = cached_attacks(tmp_path, "k", lambda: [beaten])
    again = cached_attacks(tmp_path, "k", lambda: pytest.fail("attacked again"))
    assert stored == [beaten]
    (read,) = again
    pd.testing.assert_series_equal(read.radius, beaten.radius)
    assert read.violations[0]["index"] == 3 and read.violations[0]["perturbation"][0] == 0.1
    assert (read.seconds, read.norm, read.space, read.method) == (1.5, "l2", "input", "closed_form")


def test_a_verified_entry_of_other_labels_is_never_used(tmp_path, calls):
    """An entry whose digests were recomputed after its labels were changed passes the digest
    check; the label check against the data still refuses it."""
    from gmcert.io import file_digest

    _, first = run_in(tmp_path, "first")
    log = entry_log(tmp_path)
    lines = log.read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[2] = str((int(fields[2]) + 1) % 10)
    log.write_text(lines[0] + ",".join(fields) + "".join(lines[2:]))
    meta_file = log.parent / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["sha256"]["predictions.csv"] = file_digest(log)
    meta_file.write_text(json.dumps(meta))
    _, second = run_in(tmp_path, "second")
    assert calls == {"closed_form": 2 * 360}
    assert (second / "predictions.csv").read_text().split("\n")[1].split(",")[:5] == (
        first / "predictions.csv"
    ).read_text().split("\n")[1].split(",")[:5]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("closed_form,notanumber,1,1,0.1,0.1,True,0.001\n", "is not a number"),
        ("closed_form,3,1\n", "not a complete prediction row"),
    ],
)
def test_a_damaged_source_folder_is_refused_by_line(tmp_path, damage, message):
    _, first = run_in(tmp_path, "first")
    with open(first / "predictions.csv", "a") as f:
        f.write(damage)
    with pytest.raises(ValueError, match=message):
        run_in(tmp_path, "again", f"certify.predictions_from={first}", "cache.enabled=false")


def stored_attack(tmp_path: Path):
    from gmcert.attack.cache import cached_attacks
    from gmcert.attack.results import Attacked

    attacked = Attacked(
        radius=pd.Series([0.5], index=pd.Index([3], name="index"), name="r"),
        violations=[],
        seconds=1.0,
        norm="l2",
        space="input",
        method="closed_form",
    )
    cached_attacks(tmp_path, "k", lambda: [attacked])
    return tmp_path / "attacks" / "k", cached_attacks


def reseal(entry: Path) -> None:
    """Recompute the entry's digests after a forgery, as an attacker with write access would."""
    from gmcert.io import file_digest

    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"] = {name: file_digest(entry / name) for name in meta["sha256"]}
    (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("forgery", ["pickled_radii", "unknown_kind", "extra_field", "not_a_list"])
def test_a_forged_attack_entry_is_never_loaded_and_is_attacked_again(tmp_path, forgery):
    import numpy as np

    entry, cached_attacks = stored_attack(tmp_path)
    records = json.loads((entry / "results.json").read_text())
    if forgery == "pickled_radii":
        # An object array needs pickle to load: np.load refuses it (allow_pickle=False).
        np.savez(entry / "radii.npz", index_0=np.array([3]), radius_0=np.array([{}], dtype=object))
    elif forgery == "unknown_kind":
        records[0]["kind"] = "os.system"
    elif forgery == "extra_field":
        records[0]["__class__"] = "x"
    else:
        records = {"kind": "certificate"}
    if forgery != "pickled_radii":
        (entry / "results.json").write_text(json.dumps(records))
    reseal(entry)
    again = []
    cached_attacks(tmp_path, "k", lambda: again.append(1) or [])
    assert again == [1]
