"""Dask workers as SLURM jobs (dask-jobqueue), for `python -m inversion.pipeline run --scheduler ADDRESS`.

On a cluster's login node, in a checkout on the shared file system with `make venv` done:

    python tools/slurm_workers.py --jobs 8 --partition gpu --gpus-per-job 1 --cores 8 --memory 64GB \\
        --walltime 12:00:00                       # keeps running: the scheduler lives in this process
    # in a second shell, with the address it printed:
    INVERSION_CACHE=/shared/cache python -m inversion.pipeline run --params paper --device cuda \\
        --scheduler tcp://10.0.0.5:8786

Each job runs one Dask worker (one stage at a time) that offers ``GPU=1`` when ``--gpus-per-job`` is 1, so
every stage of a cuda run gets a GPU of its own; SLURM's ``--gres=gpu:1`` sets CUDA_VISIBLE_DEVICES, so the
worker sees its GPU as cuda:0. The stage cache must be on a file system every node sees (the workers
write results there; the runner only reads them): pass its root with ``--cache`` or $INVERSION_CACHE.
``--dry-run`` prints the sbatch script a job would run and exits (no SLURM needed), to check it first.
Stop with Ctrl-C: the jobs are cancelled. PBS, SGE and LSF work the same way through dask-jobqueue's
other cluster classes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, required=True, help="SLURM jobs, one Dask worker each")
    ap.add_argument("--partition", default=None, help="SLURM partition (queue)")
    ap.add_argument("--account", default=None, help="SLURM account")
    ap.add_argument("--cores", type=int, default=4, help="CPU cores per job (torch threads of its worker)")
    ap.add_argument("--memory", default="32GB", help="memory per job")
    ap.add_argument("--walltime", default="12:00:00", help="time limit per job (HH:MM:SS)")
    ap.add_argument("--gpus-per-job", type=int, default=0, choices=(0, 1), help="1: each job gets one GPU")
    ap.add_argument("--cache", default=os.environ.get("INVERSION_CACHE"),
                    help="stage cache root on the shared file system (default $INVERSION_CACHE)")
    ap.add_argument("--python", default=sys.executable, help="the venv's python on the compute nodes")
    ap.add_argument("--dry-run", action="store_true", help="print the job script and exit")
    return ap


def make_cluster(args):
    from dask_jobqueue import SLURMCluster

    sys.path.insert(0, str(REPO / "lib"))
    from inversion.pipeline.engine import nanny_environ

    if args.jobs < 1 or args.cores < 1:
        raise SystemExit(f"--jobs and --cores must be >= 1, got {args.jobs} and {args.cores}")
    if not args.cache:
        raise SystemExit("--cache (or $INVERSION_CACHE): the stage cache's root on a file system all nodes share")
    # what the nanny gives the worker: its default less MALLOC_TRIM_THRESHOLD_, which slows CPU training 2.6x
    # (engine.py), and the job's cores for torch (the nanny's default of one thread would override the export)
    environ = json.dumps({**nanny_environ(), "OMP_NUM_THREADS": args.cores})
    prologue = [f"export INVERSION_CACHE={args.cache}", f"export OMP_NUM_THREADS={args.cores}",
                f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{environ}'", f"cd {REPO}"]
    return SLURMCluster(
        queue=args.partition, account=args.account, cores=1, processes=1,  # one worker, one stage at a time
        job_cpu=args.cores, memory=args.memory, walltime=args.walltime, python=args.python,
        job_extra_directives=["--gres=gpu:1"] if args.gpus_per_job else [],
        worker_extra_args=["--resources", "GPU=1"] if args.gpus_per_job else [],
        job_script_prologue=prologue, scheduler_options={"dashboard_address": None},
    )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    cluster = make_cluster(args)
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        device = "cuda" if args.gpus_per_job else "cpu"
        print(f"scheduler at {cluster.scheduler_address}; {args.jobs} jobs submitted. Run the stages with\n"
              f"  INVERSION_CACHE={args.cache} {args.python} -m inversion.pipeline run --params paper "
              f"--device {device} --scheduler {cluster.scheduler_address}\nCtrl-C cancels the jobs.", flush=True)
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
