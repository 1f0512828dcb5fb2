"""`tvr`: the command line over the library (manifest, run, demo, status)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import ConfigError


def _cmd_manifest(args) -> int:
    from pipeline import config as config_lib
    from pipeline.run import DatasetConfig, build_and_write_manifest, describe_manifest
    from pipeline.storage import Store

    options = config_lib.apply_overrides({}, args.set)
    dataset = DatasetConfig(format=args.format, annotations=args.annotations, videos=args.videos,
                            options=options)
    output, manifest = build_and_write_manifest(Store.open(args.out), dataset)
    print(describe_manifest(output, manifest))
    print(f"wrote {args.out}/manifest/{output.version}/{{videos,captions,problems}}.parquet")
    return 0


def _cmd_run(args) -> int:
    from pipeline import config as config_lib
    from pipeline.run import RunConfig, run_pipeline

    cfg = config_lib.load(RunConfig, args.config, args.set)
    run_pipeline(cfg, args.stages)
    return 0


def _cmd_demo(args) -> int:
    from pipeline.demo import run_demo
    from pipeline.status import collect, render

    run_demo(Path(args.out), workers=args.workers)
    print()
    print(render(collect(args.out)))
    print(f"\nParquet shards are under {args.out}/ (try: tvr status {args.out})")
    return 0


def _cmd_status(args) -> int:
    from pipeline.status import collect, render

    if not Path(args.out).exists() and "://" not in args.out:
        print(f"{args.out} does not exist", file=sys.stderr)
        return 1
    print(render(collect(args.out)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline.datasets import FORMATS

    parser = argparse.ArgumentParser(prog="tvr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    manifest = commands.add_parser(
        "manifest", help="read a dataset's annotations into videos/captions tables",
        description="Formats: " + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
    )
    manifest.add_argument("format", choices=sorted(FORMATS))
    manifest.add_argument("--annotations", required=True, help="annotation folder or file")
    manifest.add_argument("--videos", required=True, help="root folder of the video files")
    manifest.add_argument("--out", required=True, help="output folder (or pyarrow.fs URI)")
    manifest.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="a format option, e.g. train_list=7k")
    manifest.set_defaults(func=_cmd_manifest)

    run = commands.add_parser("run", help="run stages from a YAML config")
    run.add_argument("config", help="YAML config, e.g. jobs/configs/msrvtt.yaml")
    run.add_argument("--stages", nargs="+", help="only these stages (default: all)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. keyframes.sampling.num_frames=16")
    run.set_defaults(func=_cmd_run)

    demo = commands.add_parser("demo", help="generate a small dataset and run every stage on it")
    demo.add_argument("--out", default="tvr-demo", help="output folder (default: tvr-demo)")
    demo.add_argument("--workers", type=int, default=None, help="parallel workers per stage")
    demo.set_defaults(func=_cmd_demo)

    status = commands.add_parser("status", help="versions, shards, rows and failures per stage")
    status.add_argument("out")
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pipeline.datasets import AnnotationError

    try:
        return args.func(args)
    except (ConfigError, AnnotationError, FileNotFoundError) as exc:
        print(f"tvr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
