"""The command line of the stage cache (``python -m inversion.stages`` is the same command, kept as an alias).

    python -m inversion.pipeline run    --params paper [--only layers:mnist] [--device cuda] [--progress]
    python -m inversion.pipeline run    --params quick --workers 2               # a local Dask cluster
    python -m inversion.pipeline run    --params paper --scheduler tcp://host:8786 --device cuda
    torchrun --nproc_per_node=4 -m inversion.pipeline run --params paper --device cuda   # data-parallel
    python -m inversion.pipeline list   --params quick          # every stage of the set: cached or missing
    python -m inversion.pipeline show   --params quick KEY      # a result.json
    python -m inversion.pipeline costs  --params quick          # wall time per section and stage kind
    python -m inversion.pipeline stages                         # every kind of stage, its version and config
    python -m inversion.pipeline pack   --params paper results.tgz   # finished results, no checkpoints
    python -m inversion.pipeline unpack --params paper results.tgz   # merge them into this machine's cache
    python -m inversion.pipeline export-json --params paper     # params/paper.json for machines without PyYAML

A mistake on the command line or in a parameter set prints one line saying what is wrong and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from inversion import distributed

from inversion.pipeline.cache import CACHE_ENV, Cache, iter_refs, pack, unpack
from inversion.pipeline.engine import Job, StageFailed, connect, run_parallel
from inversion.pipeline.plans import STAGES, available, load_params, plan, plan_costs
from inversion.pipeline.schema import ConfigError
from inversion.training import check_compile, check_cuda_graph


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="The book's stage cache: run, list, show, carry results.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="quick", help="parameter set name (params/<name>.yaml) or YAML path")
    common.add_argument("--only", nargs="*", default=None, metavar="SECTION[:DATASET]",
                        help="restrict to sections/datasets, e.g. layers:mnist background dynamics")
    common.add_argument("--cache", default=None, help=f"cache root (default ${CACHE_ENV} or <repo>/cache)")
    run = sub.add_parser("run", parents=[common], help="compute every missing stage of the parameter set")
    run.add_argument("--device", default=None, help="cpu / cuda (default: the set's device, auto = cuda if present)")
    run.add_argument("--progress", action="store_true", help="tqdm progress bars for training")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the PixelCNN++ inversion models' training: the same stages (not part of "
                          "any key, recorded in their provenance), ~1.65x faster steps on a CPU after ~3 min of "
                          "compiling per model shape; pays for stages of thousands of steps. Refused on cuda for bf16 "
                          "models, which diverged there (bench/results/compile_autocast-cuda.md)")
    run.add_argument("--cuda-graphs", action="store_true",
                     help="on cuda, replay each PixelCNN++ training step as one recorded CUDA graph: the same "
                          "stages (not part of any key, recorded in their provenance); for models so small that "
                          "kernel launches bound the step (bench/results/cuda_graph_training-cuda.md). Not with "
                          "--compile, torchrun, or dropout")
    run.add_argument("--workers", type=int, default=0, metavar="N",
                     help="run stages in parallel on a local Dask cluster of N worker processes (on cuda: one per "
                          "GPU, at most N); 0 (default): one after another in this process")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="run stages on the workers of a running Dask scheduler (e.g. tcp://host:8786)")
    run.add_argument("--threads", type=int, default=0, metavar="T",
                     help="torch threads per process: of this one, or of each parallel worker (default: torch's "
                          "own; with workers, the cores divided among them). Results are bitwise equal between "
                          "runs with equal threads per process; otherwise equal up to float rounding")
    sub.add_parser("list", parents=[common], help="list the stages of the set with their cache status")
    sub.add_parser("costs", parents=[common], help="wall time of the cached stages, per section and stage kind "
                   "(from their provenance; each stage counted once, in the first section needing it)")
    show = sub.add_parser("show", parents=[common], help="print the result.json of a stage (key or dirname)")
    show.add_argument("key")
    sub.add_parser("stages", help="every kind of stage: name, version, consumed stages, config with defaults")
    exp = sub.add_parser("export-json", parents=[common], help="write params/<set>.json for machines without PyYAML")
    exp.add_argument("--out", default=None)
    pk = sub.add_parser("pack", parents=[common], help="tar.gz the finished results (no checkpoints) to carry them")
    pk.add_argument("archive")
    pk.add_argument("--with-checkpoints", action="store_true")
    up = sub.add_parser("unpack", parents=[common], help="merge a pack archive into the cache")
    up.add_argument("archive")
    return ap


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return repr(f.default_factory())
    return "<required>"


def _describe_stages() -> str:
    lines = []
    for s in STAGES.values():
        fields = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(s.config))
        deps = f" <- {', '.join(s.deps)}" if s.deps else ""
        lines.append(f"{s.name} (v{s.version}){deps}: {s.doc.splitlines()[0] if s.doc else ''}\n    {fields}")
    return "\n".join(lines)


def _run(args) -> int:
    if args.cmd == "stages":
        print(_describe_stages())
        return 0
    P = load_params(args.params)
    if args.cmd == "export-json":
        out = Path(args.out) if args.out else Path(P.source).with_suffix(".json")
        out.write_text(json.dumps(P.data, indent=1) + "\n")
        print(out)
        return 0
    device = _device(args, P)
    cache = Cache(P, root=args.cache, device=device, progress=getattr(args, "progress", False),
                  group=_group(args, device), compile=getattr(args, "compile", False),
                  cuda_graph=getattr(args, "cuda_graphs", False))
    the_plan = plan(P, args.only)
    if args.cmd == "list":
        rows = list(iter_refs(the_plan))
        for r in rows:
            print(f"{cache.status(r):22s} {r.describe()}")
        print(f"{sum(cache.has(r) for r in rows)}/{len(rows)} stages cached in {cache.root}")
        return 0
    if args.cmd == "costs":
        print(_costs_table(plan_costs(the_plan, cache)))
        return 0
    if args.cmd == "pack":
        names = pack(cache, Path(args.archive), args.with_checkpoints)
        print(f"packed {len(names)} stage results of {cache.root} into {args.archive}")
        return 0
    if args.cmd == "unpack":
        if not Path(args.archive).is_file():
            raise ConfigError(f"unpack: no archive at {args.archive}")
        added = unpack(cache, Path(args.archive))
        print(f"added {len(added)} stage results to {cache.root}")
        return 0
    if args.cmd == "show":
        matches = sorted(cache.root.glob(f"*{args.key}*/result.json"))
        if not matches:
            raise ConfigError(f"show: no result matching {args.key!r} in {cache.root} "
                              f"(`list --params {P.name}` shows the keys)")
        for m in matches:
            print(m.read_text())
        return 0
    # run: datasets that cannot be downloaded here are skipped, with the reason
    if "layers" in the_plan:
        for d in list(the_plan["layers"]):
            ok, why = available(d)
            if not ok:
                print(f"skipping {d}: {why}", file=sys.stderr)
                del the_plan["layers"][d]
    refs = list(iter_refs(the_plan))
    if args.compile:
        _refuse_compiled_bf16(refs, cache)
    if args.cuda_graphs:
        _check_cuda_graphs(args, cache)
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: the default), got {args.threads}")
    if args.workers or args.scheduler:
        return _run_parallel(args, cache, refs)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    for r in refs:
        cache.result(r)
    if cache.group is None or cache.group.is_main:
        print(f"{len(cache.computed)} stages computed, {len(refs) - len(cache.computed)} cached; "
              f"{time.perf_counter() - t0:.0f} s; results in {cache.root}"
              + (f"; {cache.group.world_size} processes (torchrun)" if cache.group else ""))
    return 0


def _check_cuda_graphs(args, cache: Cache) -> None:
    """``--cuda-graphs`` where it cannot run is refused before any stage runs (``check_cuda_graph`` says why)."""
    try:
        check_cuda_graph(torch.device(cache.device), True, args.compile, distributed_run=cache.group is not None)
    except ValueError as e:
        raise ConfigError(f"--cuda-graphs: {e}") from None


def _refuse_compiled_bf16(refs, cache: Cache) -> None:
    """``--compile`` on cuda with a bf16 PixelCNN++ still to train is refused before any stage runs, not when
    that stage is reached (``inversion.training.check_compile`` says why). Only the PixelCNN++ training stages,
    the ones --compile compiles, have a ``bf16`` setting (``PixelCNNConfig``)."""
    todo = [r.dirname for r in refs if r.config.get("bf16") and not cache.has(r)]
    if todo:
        try:
            check_compile(torch.device(cache.device), True, True)
        except ValueError as e:
            more = f" and {len(todo) - 3} more" if len(todo) > 3 else ""
            raise ConfigError(f"--compile on {cache.device}: {', '.join(todo[:3])}{more} train under bf16. {e}") from None


def _costs_table(costs) -> str:
    """One line per part and stage kind, a subtotal per part, and the total, in minutes."""
    lines, total, n, cached = [], 0.0, 0, 0
    for part in dict.fromkeys(c.part for c in costs):
        mine = [c for c in costs if c.part == part]
        sec = sum(c.seconds for c in mine)
        total += sec
        n += sum(c.n for c in mine)
        cached += sum(c.cached for c in mine)
        lines.append(f"{part:24s} {sec / 60:7.1f} min")
        for c in sorted(mine, key=lambda c: -c.seconds):
            missing = f"  ({c.n - c.cached} not cached)" if c.cached < c.n else ""
            lines.append(f"  {c.stage:22s} {c.seconds / 60:7.1f} min  {c.cached:3d} stages{missing}")
    lines.append(f"{'total':24s} {total / 60:7.1f} min  {cached}/{n} stages cached")
    return "\n".join(lines)


def _device(args, P) -> str:
    """The run's device, checked: a cuda run on a machine without a GPU is a clear error, not a crash later."""
    device = getattr(args, "device", None) or P.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available() and not getattr(args, "scheduler", None):
        raise ConfigError(f"--device {device}: torch sees no GPU on this machine; use --device cpu")
    return device


def _group(args, device):
    """The torchrun process group when this is one rank of a data-parallel run (else None)."""
    if args.cmd != "run" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if args.workers or args.scheduler:
        raise ConfigError("--workers/--scheduler spread stages over processes; torchrun spreads one model's "
                          "training over processes: use one or the other")
    try:
        return distributed.from_environment(device)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _run_parallel(args, cache: Cache, refs) -> int:
    workers = args.workers or 0
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    job = Job(cache.params, root=str(cache.root.parent), device=cache.device, progress=args.progress,
              threads=threads, compile=cache.compile, cuda_graph=cache.cuda_graph)
    client = connect(args.scheduler, cache.device, workers, threads)
    try:
        try:
            report = run_parallel(job, refs, client)
        except StageFailed as e:
            print(e, file=sys.stderr)
            return 1
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None and not args.scheduler:
            cluster.close()
    where = args.scheduler or f"a local cluster of {report.workers} workers x {threads} torch threads"
    print(f"{len(report.computed)} stages computed, {len(report.cached)} cached; {report.seconds:.0f} s on {where}; "
          f"results in {cache.root}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m inversion.pipeline") -> int:
    """Run the command line; a user error (bad arguments, parameter set or selector) prints one line, exit 2."""
    args = _parser(prog).parse_args(argv)  # argparse itself prints usage and exits 2 on bad arguments
    try:
        return _run(args)
    except ConfigError as e:
        print(f"{prog.split()[-1]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
