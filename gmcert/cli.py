"""Console entry points. Each only hands a plain function its arguments."""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gmcert.config import register_configs

log = logging.getLogger("gmcert")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
# Errors a user can fix: shown as one clear line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)

register_configs()


def config_choices() -> str:
    """``group: option, ...`` per config group, for ``gmcert-run --help``: the options a user
    can choose, without the typed schemas (``schema_*``) the options are checked against."""
    root, lines = Path(CONFIG_DIR), []
    groups = [p for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "local")]
    for group in sorted([*groups, root / "hydra" / "launcher"]):
        names = sorted(f.stem for f in group.glob("*.yaml") if not f.stem.startswith("schema_"))
        if names:
            lines.append(f"{group.relative_to(root).as_posix()}: {', '.join(names)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("gmcert_choices", config_choices, replace=True)


def run_job(cfg: DictConfig) -> dict | None:
    """Run one job. In a sweep a failing job logs its error and folder, and the sweep goes on."""
    from gmcert.attack.stage import UnsoundCertificate
    from gmcert.pipeline import run

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    out_dir = Path(cfg.paths.output_dir)
    try:
        metrics = run(cfg)
    except Exception as err:
        record_failure(out_dir, cfg, err, multirun=multirun)
        if multirun and cfg.continue_on_error:
            if isinstance(err, USER_ERRORS):  # one line; the traceback only at debug level
                log.error("job failed: %s; the sweep goes on. Folder: %s", err, out_dir)
                log.debug("user error", exc_info=True)
            else:
                log.exception("job failed; the sweep goes on. Folder: %s", out_dir)
            return None
        if isinstance(err, UnsoundCertificate):
            print(f"gmcert: {err}", file=sys.stderr)
            sys.exit(3)
        if isinstance(err, USER_ERRORS):
            log.debug("user error", exc_info=True)
            print(f"gmcert: error: {err}", file=sys.stderr)
            sys.exit(2)
        if isinstance(err, OSError):
            log.debug("file system error", exc_info=True)
            print(f"gmcert: error: {file_error(err)}", file=sys.stderr)
            sys.exit(2)
        raise
    from gmcert.report.table import format_table, read_table

    (out_dir / "failed.json").unlink(missing_ok=True)  # an earlier attempt's failure is over
    print(f"\n{format_table(read_table(out_dir))}\n")
    print(f"radii: {metrics['radius_units']}")
    print(f"interval: one-sided Clopper-Pearson bounds, each at level {cfg.certify.ci_alpha}")
    for name, summary in metrics["methods"].items():
        if "radius_cap" in summary:
            print(
                f"{name}: sigma={summary['sigma']}, n={summary['n']}, alpha={summary['alpha']}: "
                f"radius cap {summary['radius_cap']:.3f} (a cap, not a result; "
                f"{summary['at_cap']:.1%} of points at it)"
            )
    attack = metrics.get("attack") or {}
    if "method" in attack:
        print(
            f"attacked: {attack['points']:,} {attack['method']} points attacked in "
            f"{attack['norm']} ({attack['space']} space; the 'attacked' column is over these), "
            f"{attack['seconds']:.1f} s; median certified / attack radius "
            f"{attack['tightness_median'] or float('nan'):.3f}; no attack beat a certificate"
        )
    for name, s in attack.get("smoothing", {}).items():
        print(
            f"attacked: {s['points']:,} {name} points (smoothed classifier, PGD then PREDICT "
            f"with n={s['predict_n']:,}), {s['seconds']:.1f} s; median certified / attack "
            f"radius {s['tightness_median'] or float('nan'):.3f}; {s['confirmed_flips']} "
            f"confirmed flips inside a certified radius ({s['flips_allowed']} allowed by alpha)"
        )
    divergence = metrics.get("divergence") or {}
    if "eps_used" in divergence:
        # The estimator that gave eps; a stated budget comes from none.
        estimated = divergence["eps_source"] != "stated budget"
        source = divergence.get("from_estimator") if estimated else None
        print(
            f"eps = KL(P || Q): {divergence['eps_used']:.4g} ({divergence['eps_source']}"
            + (f", from {source}" if source else "")
            + f"); {divergence['verdict']}"
        )
    for line in divergence.get("calibration_summary", []):
        print(line)
    print(f"wrote {out_dir}")
    return metrics


def record_failure(out_dir: Path, cfg: DictConfig, err: Exception, *, multirun: bool) -> None:
    """``failed.json`` with the error, in a sweep job's folder and a single run's alike, so that
    ``gmcert-report`` can say why the folder holds no results. A single run never marks a folder
    that already holds complete results (a refused rerun into it) or that another run holds."""
    from gmcert.io import lock_run_folder, write_json, write_run_config

    try:
        results = (out_dir / "certified_accuracy.csv", out_dir / "metrics.json")
        if not multirun:
            if all(path.exists() for path in results):
                return
            lock_run_folder(out_dir).close()  # ValueError while another run works in it
        write_json(out_dir / "failed.json", {"error": f"{type(err).__name__}: {err}"})
        if not (out_dir / ".hydra" / "config.yaml").exists():  # never relabel old results
            write_run_config(out_dir, cfg)
    except Exception:  # a full disk, a bad or busy folder: the error itself is still reported
        log.debug("could not record the failure in %s", out_dir, exc_info=True)


_FILE_ERROR_FIXES = {
    errno.ENOSPC: "the disk is full: free space, or put hydra.run.dir / paths.cache_dir on "
    "another disk, then run the same command again (it resumes where it stopped)",
    errno.EDQUOT: "the disk quota is used up: free space, then run the same command again",
    errno.EROFS: "the file system is read-only: choose a writable hydra.run.dir / paths.cache_dir",
    errno.EACCES: "permission denied: fix the permissions, or choose a folder you can write "
    "(hydra.run.dir, paths.cache_dir)",
    errno.EPERM: "operation not permitted: fix the permissions, or choose another folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder: fix the path in the config",
    errno.EISDIR: "this is a folder where a file is expected: fix the path in the config",
    errno.ENOENT: "no such file or folder: fix the path in the config",
}


def file_error(err: OSError) -> str:
    """One line for a file system error: what, which file, and what to do."""
    where = f" {err.filename}" if err.filename else ""
    fix = _FILE_ERROR_FIXES.get(err.errno, "check the path and the disk")
    return f"{err.strerror or err}:{where}; {fix}"


class CheckOutputFolder(Callback):
    """Before Hydra creates the output folder (and would fail there with a traceback): make it,
    or stop with one line saying why not and what to do."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._make(self._resolve(config, "run"))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._make(self._resolve(config, "sweep"))

    @staticmethod
    def _resolve(config: DictConfig, mode: str) -> str:
        # The folder's path goes through ${hydra:runtime.cwd}, which resolves only once
        # HydraConfig holds this config; Hydra sets it after the callbacks (and warned here).
        HydraConfig.instance().set_config(config)
        return config.hydra[mode].dir

    @staticmethod
    def _make(folder: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(
                f"gmcert: error: cannot create the output folder: {file_error(err)}",
                file=sys.stderr,
            )
            sys.exit(2)


class FailedJobs(Callback):
    """After a sweep, names each job that failed (its ``failed.json``), so that the sweep, which
    went on with the other jobs, still ends with a non-zero exit status."""

    failed: list[Path] = []

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        FailedJobs.failed = sorted(p.parent for p in sweep_dir.rglob("failed.json"))
        for folder in FailedJobs.failed:
            error = json.loads((folder / "failed.json").read_text()).get("error", "")
            print(f"gmcert: job failed: {folder}: {error}", file=sys.stderr)


class EpsSweepReport(Callback):
    """After a sweep over ``divergence.eps``: one report of the bound against eps
    (``bound_vs_eps.{csv,md,png}`` in the sweep folder), since every job's table repeats the
    same measured numbers."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from gmcert.report.eps_sweep import write_eps_sweeps
        from gmcert.report.sweep import find_runs

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            for written in write_eps_sweeps(find_runs([sweep_dir]), sweep_dir):
                print(f"\n{written.read_text()}\nwrote {written.with_suffix('.*')}")
        except Exception:  # the jobs' own results stand; the summary is a convenience
            log.exception("could not write the eps sweep's report into %s", sweep_dir)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run_job(cfg)


def run_main() -> None:
    _hydra_main()
    if FailedJobs.failed:
        print(f"gmcert: {len(FailedJobs.failed)} job(s) of the sweep failed", file=sys.stderr)
        sys.exit(1)


def reevaluate_args(run_dir: Path, overrides: list[str], out: Path | None = None) -> list[str]:
    """The ``gmcert-run`` arguments that evaluate ``run_dir``'s certified predictions again
    with ``overrides`` (evaluation options), into ``out`` (default: a new folder beside it):
    the run's own overrides, the new ones in their place, and ``certify.predictions_from``."""
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not (run_dir / "predictions.csv").is_file() or not saved_file.is_file():
        raise ValueError(
            f"{run_dir} is not a gmcert run folder (it needs predictions.csv and "
            ".hydra/overrides.yaml); pass the folder gmcert-run wrote"
        )
    saved = OmegaConf.to_container(OmegaConf.load(saved_file))
    if not isinstance(saved, list):
        raise ValueError(f"{saved_file} holds no list of overrides; pass a gmcert run folder")

    def key(override) -> str:
        return str(override).split("=", 1)[0].lstrip("+~")

    replaced = {key(o) for o in overrides} | {"certify.predictions_from"}
    kept = [str(o) for o in saved if key(o) not in replaced and not key(o).startswith("hydra.")]
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = run_dir.parent / f"{run_dir.name}-reevaluated-{stamp}"
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; re-evaluations never write over a folder")

    def quoted(path: Path) -> str:  # Hydra's grammar: a quoted value may hold any character
        return "'" + str(path.resolve()).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return [
        *kept,
        *overrides,
        f"certify.predictions_from={quoted(run_dir)}",
        f"hydra.run.dir={quoted(out)}",
    ]


def reevaluate_main(argv: list[str] | None = None) -> None:
    """``gmcert-reevaluate RUN_DIR [key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog="gmcert-reevaluate",
        description="Evaluate a run's certified predictions again with other evaluation "
        "options (certify.radii, certify.ci_alpha, certify.population_samples, divergence.*, "
        "attack.*), into a new folder beside the run; nothing is certified again.",
    )
    parser.add_argument("run_dir", type=Path, help="the run folder gmcert-run wrote")
    parser.add_argument("overrides", nargs="*", help="key=value evaluation options")
    parser.add_argument("--out", type=Path, help="the new folder (default: beside RUN_DIR)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run_args = reevaluate_args(args.run_dir, args.overrides, args.out)
    except (ValueError, OSError) as err:
        print(f"gmcert-reevaluate: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = ["gmcert-reevaluate", *run_args]
    run_main()


def report_main(argv: list[str] | None = None) -> None:
    from gmcert.report.sweep import report_cli

    sys.exit(report_cli(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    # Through the imported module, whose FailedJobs class is the one Hydra's callback fills.
    from gmcert.cli import run_main as main

    main()
