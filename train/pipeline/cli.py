"""The ``kgclip`` command: ``kgclip STAGE [hydra overrides]`` and ``kgclip run``.

The first argument names the stage; everything after it goes to Hydra, so
overrides, ``--multirun``, ``--cfg job`` and ``--help`` work as Hydra users
expect. ``--dry-run`` is kgclip's own flag: it becomes ``dry_run=true``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import conf
from kg.errors import KgclipError
from train.pipeline.catalog import Catalog, config_hash
from train.pipeline.stages import STAGES

log = logging.getLogger("kgclip")

CONF_DIR = str(Path(conf.__file__).parent)
DATA_DIR = Path(__file__).resolve().parents[2] / "kg" / "data"
ORDER = [
    "ingest",
    "harvest",
    "queries",
    "search",
    "download",
    "curate",
    "export",
    "train",
    "evaluate",
]  # `kgclip run` runs these, in this order
FLAGS = {"--dry-run": "dry_run=true", "--check-engines": "check_engines=true"}
# Hydra options followed by a value: those that say where the configuration
# comes from (a relaunched DDP rank keeps them), and the others.
CONFIG_OPTIONS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}
VALUED_OPTIONS = {"--cfg", "-c", "--package", "-p", "--experimental-rerun"}
VALUED_OPTIONS |= CONFIG_OPTIONS
# The values --info may take.
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}

USAGE = f"""usage: kgclip STAGE [key=value ...] [--dry-run] [--multirun] [--cfg job]

stages: {", ".join(ORDER)}; `kgclip run` runs them all in order.
`kgclip STAGE --help` lists the configuration.
"""


def _data_path(name: str) -> str:
    """Resolver ``${kgclip_data:NAME}``: a file bundled with kgclip.

    ``NAME`` is a file of ``kg/data`` (a dump), or ``PACKAGE/NAME`` for the
    data of another package, e.g. ``crawl/samples``.
    """
    package, _, rest = name.partition("/")
    if rest and package in ("kg", "crawl", "curate", "train"):
        return str(DATA_DIR.parents[1] / package / "data" / rest)
    return str(DATA_DIR / name)


OmegaConf.register_new_resolver("kgclip_data", _data_path, replace=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``kgclip`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return
    stage = args.pop(0)
    if stage != "run" and stage not in STAGES:
        sys.stderr.write(f"kgclip: unknown stage {stage!r}\n\n{USAGE}")
        raise SystemExit(2)
    options, overrides = _split_hydra_args([FLAGS.get(arg, arg) for arg in args])
    sys.argv = [f"kgclip {stage}", *options, *overrides, f"stage={stage}"]
    _hydra_main()


def _split_hydra_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's options (with their values) apart from the overrides.

    Hydra's parser takes the overrides as one run of positional arguments, so
    they must not be split by an option; kgclip adds ``stage=`` among them.
    """
    options: list[str] = []
    overrides: list[str] = []
    pending_value = False
    for arg in args:
        if pending_value:
            options.append(arg)
            pending_value = False
        elif arg.startswith("-"):
            options.append(arg)
            pending_value = arg in VALUED_OPTIONS
        elif options and options[-1] == "--info" and arg in INFO_CHOICES:
            options.append(arg)
        else:
            overrides.append(arg)
    return options, overrides


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(str(cfg.run.log_level).upper())
    stages = _run_order(cfg) if cfg.stage == "run" else [str(cfg.stage)]
    try:
        for stage in stages:
            run_stage(cfg, stage)
    except KgclipError as error:
        log.error("%s", error)
        raise SystemExit(2) from None


def _run_order(cfg: DictConfig) -> list[str]:
    """The stages of ``kgclip run``: all of them, or up to ``run.until``."""
    until = cfg.run.get("until")
    if until is None:
        return ORDER
    if until not in ORDER:
        log.error("run.until=%s is not a stage; use one of %s", until, ", ".join(ORDER))
        raise SystemExit(2)
    return ORDER[: ORDER.index(str(until)) + 1]


# Environment variables that name a process's rank in a distributed run.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def secondary_rank() -> bool:
    """Whether this process is a distributed training's rank other than 0."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


def _relaunch_argv(stage: str) -> list[str]:
    """The command line that runs ``stage`` alone, with this job's overrides.

    Lightning starts the other ranks of a DDP run by running ``sys.argv``
    again. ``kgclip STAGE`` is no file it can run, and ``kgclip run`` or a
    sweep would repeat every stage or job in each rank; this runs this
    module with the job's own overrides and ``stage=STAGE``.
    """
    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (a test calling run_stage)
        task = []
    kept = [arg for arg in task if not arg.startswith("stage=")]
    options: list[str] = []
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg in CONFIG_OPTIONS and i + 1 < len(args):
            options += [arg, args[i + 1]]
    return [str(Path(__file__).resolve()), *options, *kept, f"stage={stage}"]


def run_stage(cfg: DictConfig, stage: str) -> dict:
    """Run one stage, recording it in ``stage_runs``; log one summary line."""
    sys.argv = _relaunch_argv(stage)
    if secondary_rank():
        # a rank > 0 of a distributed training: rank 0 records the stage
        return STAGES[stage](cfg, Catalog.detached(Path(cfg.run.dir)))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    section = {key: resolved.get(key) for key in ("kg", stage, "dry_run")}
    started = time.perf_counter()

    with Catalog(Path(cfg.run.dir)) as catalog:
        run_id = catalog.begin(stage, "all", config_hash(section))
        try:
            counts = STAGES[stage](cfg, catalog)
        except BaseException as error:
            catalog.finish(
                run_id, "failed", {}, error=f"{type(error).__name__}: {error}"
            )
            raise
        counts["seconds"] = round(time.perf_counter() - started, 3)
        catalog.finish(run_id, "done", counts)

    summary = " ".join(f"{key}={value}" for key, value in counts.items())
    log.info("stage=%s status=done %s", stage, summary)
    return counts


if __name__ == "__main__":
    # How the ranks of a distributed training start (see _relaunch_argv): the
    # arguments are Hydra's already, ``stage=`` among them.
    _hydra_main()
