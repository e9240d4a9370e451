"""`hpcai`: the root command. Subcommands are imported only when invoked, so `hpcai --help` stays fast
on a loaded login node (no submitit, torch, zarr or numpy at start)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from hpc_aidc import __version__
from hpc_aidc.errors import HpcAidcError

# name -> (module, attribute, one-line help shown by `hpcai --help` without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "submit": ("hpc_aidc.cli.submit_group", "submit", "Submit work to Slurm: run, train, infer, sweep, pipeline."),
    "jobs": ("hpc_aidc.cli.jobs", "jobs", "List your jobs (one batched sacct + squeue call)."),
    "status": ("hpc_aidc.cli.jobs", "status", "Show one job's state, resources and progress."),
    "logs": ("hpc_aidc.cli.jobs", "logs", "Print (or follow) a job's task logs."),
    "cancel": ("hpc_aidc.cli.jobs", "cancel", "Cancel jobs."),
    "wait": ("hpc_aidc.cli.jobs", "wait", "Wait for jobs to end (Slurm asked at most every 15 s)."),
    "site": ("hpc_aidc.cli.site", "site", "Show or check the site profile."),
    "devcluster": ("hpc_aidc.cli.devcluster", "devcluster", "Run the embedded dev cluster (real Slurm)."),
    "infer": ("hpc_aidc.cli.infer", "infer", "Follow and finish batch-inference runs: status, retry."),
    "sweep": ("hpc_aidc.cli.sweep", "sweep", "Show hyperparameter sweeps: one row per trial, the best marked."),
    "energy": ("hpc_aidc.cli.energy", "energy", "Measure and show GPU/CPU energy of jobs."),
    "doctor": ("hpc_aidc.cli.doctor", "doctor", "Check this node's GPUs (NVML) and give a verdict."),
    "data": ("hpc_aidc.cli.data", "data", "Pack, verify, inspect and stage Zarr v3 datasets."),
    "report": ("hpc_aidc.cli.report", "report", "Usage and energy reports per project; the static site."),
    "plan": ("hpc_aidc.cli.plan", "plan", "Estimate per-GPU memory for a training config; suggest ZeRO stage/nodes."),
    "env": ("hpc_aidc.cli.env", "env", "Compare two jobs' environments (packages, driver, CUDA, NCCL, git, GPUs)."),
    "admin": ("hpc_aidc.cli.admin", "admin", "Admin kit: sbatch templates, policy, checks, GPU health, metrics."),
}


class LazyGroup(click.Group):
    """A group whose subcommands live in modules imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (module, _, _) in COMMANDS.items() if _module_exists(module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not _module_exists(entry[0]):
            return None
        module = importlib.import_module(entry[0])
        command = getattr(module, entry[1])
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(module: str) -> bool:
    # find_spec on a submodule imports its parent package (hpc_aidc.cli), already loaded: cheap.
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hpcai")
@click.option("--site", "site_path", envvar="HPCAI_SITE", metavar="FILE",
              help="Site profile (default: $HPCAI_SITE, then /etc/hpcai/site.toml).")
@click.pass_context
def cli(ctx: click.Context, site_path: str | None) -> None:
    """hpc-aidc: AI work on Slurm GPU clusters, easy, fast and accountable.

    Train with DeepSpeed across nodes, run batch inference, pack datasets, and see every job's
    GPU energy and cost. Every command that talks to Slurm takes --json for scripts."""
    ctx.obj = {"site_path": site_path}


def main(argv: list[str] | None = None) -> Any:
    """Entry point: HpcAidcError becomes one line on stderr and exit code 2, never a traceback."""
    return run_command(cli, argv)


def run_command(command: click.Command, argv: list[str] | None = None, prog_name: str = "hpcai") -> Any:
    """Run a click command as hpcai runs its own: errors as one line, the exit codes of the house."""
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
        # Without standalone mode, ctx.exit(n) comes back as a return value: make it the exit code.
        if isinstance(result, int) and result != 0:
            sys.exit(result)
        return result
    except HpcAidcError as exc:
        click.echo(f"hpcai: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("hpcai: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # One line, like every other bad input: the message and where to read the usage.
        where = exc.ctx.command_path if exc.ctx else "hpcai"
        click.echo(f"hpcai: error: {exc.format_message()} See `{where} --help`.", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"hpcai: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
