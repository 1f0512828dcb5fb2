"""`tvr`: the command line over the library (manifest, run, train, eval, demo, status, verify, stats,
export-tags, prompts).

Errors a user can act on (a bad key, an unreadable annotation file, a damaged or busy output, a
full disk) are printed as one line naming the file or key, with exit status 2 for what the
command line or config got wrong and 1 for the state of the files; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.config import ConfigError


def _cmd_manifest(args) -> int:
    from pipeline import config as config_lib
    from pipeline.flow import DatasetConfig, build_and_write_manifest, describe_manifest
    from pipeline.store.storage import Store

    options = config_lib.apply_overrides({}, args.set)
    dataset = DatasetConfig(format=args.format, annotations=args.annotations, videos=args.videos,
                            options=options)
    outputs, manifest = build_and_write_manifest(Store.open(args.out), dataset)
    print(describe_manifest(outputs, manifest))
    print(f"wrote {args.out}/{{{outputs.videos.path},{outputs.captions.path},{outputs.manifest.path}}}/ "
          f"(run on it with: tvr run CONFIG --manifest {outputs.manifest.version})")
    return 0


def _cmd_run(args) -> int:
    from pipeline import config as config_lib
    from pipeline.flow import RunConfig, run_pipeline

    overrides = [*args.set, *([f"dataset.manifest={args.manifest}"] if args.manifest else [])]
    cfg = config_lib.load(RunConfig, args.config, overrides)
    run_pipeline(cfg, args.stages)
    return 0


def _cmd_demo(args) -> int:
    from pipeline.demo.end_to_end import run_demo
    from pipeline.flow import output_status, verify_outputs
    from pipeline.mmi.stats import format_mmi_statistics, mmi_statistics
    from pipeline.store.status import render
    from pipeline.tags.stats import format_statistics, tag_statistics
    from pipeline.train.loop import format_metrics

    _, metrics = run_demo(Path(args.out), workers=args.workers)
    print()
    print(render(output_status(args.out)))
    print()
    print(format_statistics(*tag_statistics(args.out)))
    print("\n" + format_mmi_statistics(*mmi_statistics(args.out)))
    print(f"\ntraining (macvr with the demo's tags, {metrics['epoch']} epochs on its features, random models: "
          f"chance-level figures), checkpoint in {args.out}/train/; none+rerank: MMI Eq. 10 with the skeleton "
          "scores:")
    print(format_metrics(metrics))
    report = verify_outputs(args.out)
    print(report.render().splitlines()[-1] if report.ok else report.render())
    print(f"\nParquet shards are under {args.out}/ (try: tvr status {args.out})")
    return 0 if report.ok else 1


def _cmd_train(args) -> int:
    from pipeline import config as config_lib
    from pipeline.train.config import TrainConfig
    from pipeline.train.loop import format_metrics, run_training

    cfg = config_lib.load(TrainConfig, args.config, args.set)
    metrics = run_training(cfg)
    print(f"epoch {metrics['epoch']}, loss {metrics['loss']:.4f}")
    print(format_metrics(metrics))
    print(f"checkpoint, config and metrics in {cfg.output_dir}/ (evaluate with: tvr eval {cfg.output_dir})")
    return 0


def _cmd_eval(args) -> int:
    from pipeline.train.config import RerankOptions
    from pipeline.train.loop import evaluate_checkpoint, format_metrics

    options = {"version": args.scores_version, "lambda_r": args.lambda_r, "lambda_s": args.lambda_s}
    given = {name: value for name, value in options.items() if value is not None}  # unset: RerankOptions' defaults
    rerank = RerankOptions(args.rerank, **given) if args.rerank is not None else None
    if rerank is None and given:
        flags = {"version": "--scores-version", "lambda_r": "--lambda-r", "lambda_s": "--lambda-s"}
        raise ConfigError(f"{', '.join(flags[name] for name in given)} apply to a re-ranking: add --rerank OUT")
    if args.topk_out is not None and args.write_topk is None:
        raise ConfigError("--topk-out names where --write-topk K writes: add --write-topk K")
    metrics = evaluate_checkpoint(args.checkpoint, rerank=rerank, topk=args.write_topk, topk_out=args.topk_out)
    print(f"epoch {metrics['epoch']}")
    print(format_metrics(metrics))
    if "topk" in metrics:
        topk = metrics["topk"]
        print(f"wrote {topk['path']}: the {topk['k']} most similar test videos of each test caption by the plain "
              f"similarity, {topk['rows']} rows (score them with the skeleton_scores stage)")
    return 0


def _require_out(out: str) -> None:
    """A local output folder must exist (a URI is the filesystem's to check)."""
    if not Path(out).exists() and "://" not in out:
        raise ConfigError(f"{out} does not exist")


def _cmd_status(args) -> int:
    from pipeline.flow import output_status
    from pipeline.store.status import render

    _require_out(args.out)
    print(render(output_status(args.out)))
    return 0


def _cmd_verify(args) -> int:
    from pipeline.flow import verify_outputs

    _require_out(args.out)
    report = verify_outputs(args.out, stage=args.stage, repair=args.repair)
    if args.repair and report.repaired:
        print(report.render())
        report = verify_outputs(args.out, stage=args.stage)
    print(report.render())
    return 0 if report.ok else 1


def _cmd_stats(args) -> int:
    from pipeline.mmi.stats import format_mmi_statistics, mmi_statistics
    from pipeline.tags.stats import format_statistics, tag_statistics

    _require_out(args.out)
    print(format_statistics(*tag_statistics(args.out, top=args.top)))
    mmi = format_mmi_statistics(*mmi_statistics(args.out))
    if mmi:
        print("\n" + mmi)
    return 0


def _cmd_export_tags(args) -> int:
    from pipeline.tags.export import export_tags

    _require_out(args.out)
    summary = export_tags(args.out, args.dest, args.manifest, args.visual_version, args.textual_version)
    for file in summary.files:
        print(f"wrote {file}")
    print(f"{summary.rows} rows; without visual tags: {summary.without_visual}, "
          f"without textual tags: {summary.without_textual} (written with an empty list)")
    return 0


def _cmd_prompts_list(args) -> int:
    from pipeline.engines.prompts import PromptError, list_prompts, load_prompt, prompts_folder
    from pipeline.mmi.pools import PoolError, list_pools, load_pool

    folder = prompts_folder(args.folder)
    names = list_prompts(folder)
    if not names:
        print(f"no prompts in {folder}")
        return 0
    row, broken = "{:<28} {:<12}  {}", 0
    print(row.format("prompt", "sha256", "variables"))
    for name in names:
        try:
            prompt = load_prompt(name, folder)
        except PromptError as exc:  # list the others; a broken template is named, not fatal to the listing
            broken += 1
            print(row.format(name, "?", "error: " + " ".join(str(exc).split())))
            continue
        print(row.format(name, prompt.sha256[:12], ", ".join(prompt.variables) or "-"))
    for name in list_pools(folder):  # the MMI question pools, plain text beside the templates
        try:
            pool = load_pool(name, folder)
        except PoolError as exc:
            broken += 1
            print(row.format(name, "?", "error: " + " ".join(str(exc).split())))
            continue
        print(row.format(name, pool.sha256[:12], f"question pool: {len(pool.questions)} questions"))
    print(f"in {folder}")
    return 2 if broken else 0


def _cmd_prompts_render(args) -> int:
    from pipeline.engines.prompts import load_prompt, render_with_chat_template

    prompt = load_prompt(args.name, args.folder)
    values = {}
    for item in args.value:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--value {item!r}: expected NAME=TEXT")
        values[key] = text  # text as typed: a prompt value is data, never parsed
    if args.caption is not None:
        values["caption"] = args.caption
    unused = sorted(set(values) - set(prompt.variables))
    if unused:  # a value typed on the command line that the prompt never reads is a mistake
        raise ConfigError(f"prompt {prompt.name} does not use {', '.join(unused)} "
                          f"(its variables: {', '.join(prompt.variables) or 'none'})")
    if args.chat_template:
        print(render_with_chat_template(prompt.as_messages(**values), args.chat_template))
    else:
        print(prompt.render(**values))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline.datasets import FORMATS

    parser = argparse.ArgumentParser(prog="tvr", description=__doc__.split("\n")[0])
    debug_help = "show the full traceback of an error"
    parser.add_argument("--debug", action="store_true", help=debug_help)  # `tvr --debug COMMAND ...`
    # `tvr COMMAND ... --debug` too. A subcommand's namespace is copied over its parent's, so its
    # --debug has no default (SUPPRESS): a leaf's False would otherwise erase `tvr --debug`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kwargs)

    manifest = command(
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

    run = command("run", help="run stages from a YAML config")
    run.add_argument("config", help="YAML config, e.g. jobs/configs/msrvtt.yaml")
    run.add_argument("--stages", nargs="+", help="only these stages (default: all)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. keyframes.sampling.num_frames=16")
    run.add_argument("--manifest", metavar="VERSION",
                     help="run on an existing manifest version in OUT (or 'latest') instead of the annotations")
    run.set_defaults(func=_cmd_run)

    demo = command("demo", help="generate a small dataset and run every stage on it")
    demo.add_argument("--out", default="tvr-demo", help="output folder (default: tvr-demo)")
    demo.add_argument("--workers", type=int, default=None, help="parallel workers per stage")
    demo.set_defaults(func=_cmd_demo)

    train = command("train", help="train a retrieval head on frame_features (and the CLIP text encoder)")
    train.add_argument("config", help="YAML config, e.g. jobs/configs/train/msrvtt_xpool.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. optim.epochs=1")
    train.set_defaults(func=_cmd_train)

    evaluate = command("eval", help="test metrics of a training checkpoint, every inference strategy")
    evaluate.add_argument("checkpoint", help="checkpoint.pt, or the training output folder holding it")
    evaluate.add_argument("--rerank", metavar="OUT",
                          help="also re-rank the plain similarity by MMI-TVR Eq. 10 with the skeleton_scores in OUT "
                               "(a pipeline output folder; text-to-video only)")
    evaluate.add_argument("--scores-version", help="the skeleton_scores version to read (default: LATEST)")
    evaluate.add_argument("--lambda-r", type=float, help="Eq. 10's weight of the similarity (default: 0.6)")
    evaluate.add_argument("--lambda-s", type=float, help="Eq. 10's weight of the skeleton score (default: 0.3)")
    evaluate.add_argument("--write-topk", type=int, metavar="K",
                          help="write each test caption's K most similar test videos (the skeleton_scores "
                               "stage's candidates)")
    evaluate.add_argument("--topk-out", metavar="PATH",
                          help="where --write-topk writes (default: topk.parquet beside the checkpoint)")
    evaluate.set_defaults(func=_cmd_eval)

    status = command("status", help="versions, shards, rows and failures per stage")
    status.add_argument("out")
    status.set_defaults(func=_cmd_status)

    check = command("verify", help="check every committed part against its record; --repair withdraws "
                                               "bad shards so the next run recomputes only them")
    check.add_argument("out")
    check.add_argument("--stage", help="only this stage")
    check.add_argument("--repair", action="store_true", help="withdraw bad shards, remove stray files, fix LATEST")
    check.set_defaults(func=_cmd_verify)

    stats = command("stats", help="MAC-VR Table 1 for a run: unique tags and tags per item, per split and "
                                  "modality, and the most frequent tags; MMI's question clusters, their "
                                  "demonstrations and the skeleton scores (Markdown)")
    stats.add_argument("out")
    stats.add_argument("--top", type=int, default=10, help="how many of the most frequent tags to list")
    stats.set_defaults(func=_cmd_stats)

    export = command("export-tags", help="write the tags in the files MAC-VR's released code reads "
                                         "(MSR-VTT anns/*.csv, DiDeMo/ActivityNet all_concepts_llama3.json)")
    export.add_argument("out")
    export.add_argument("dest", help="the folder to write into (the reference code's data folder), or a pyarrow.fs URI")
    export.add_argument("--manifest", default="latest", help="the manifest version whose captions and splits to use")
    export.add_argument("--visual-version", help="a visual_tags version (default: LATEST)")
    export.add_argument("--textual-version", help="a textual_tags version (default: LATEST)")
    export.set_defaults(func=_cmd_export_tags)

    prompts = command("prompts", help="list the prompt templates, or render one as a model sees it")
    prompt_commands = prompts.add_subparsers(dest="prompts_command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--folder", help="prompts folder (default: the repository's prompts/)")
    listing = prompt_commands.add_parser("list", parents=[common, where],
                                         help="each prompt's name, sha256 prefix and variables")
    listing.set_defaults(func=_cmd_prompts_list)
    render = prompt_commands.add_parser("render", parents=[common, where],
                                        help="print a prompt's final text (or its chat-template rendering)")
    render.add_argument("name", help="a prompt's name, e.g. macvr_textual_tags (see: tvr prompts list)")
    render.add_argument("--caption", help="the caption to insert (inserted verbatim)")
    render.add_argument("--value", action="append", default=[], metavar="NAME=TEXT",
                        help="another template variable, inserted verbatim")
    render.add_argument("--chat-template", metavar="MODEL",
                        help="render the prompt as chat messages through MODEL's tokenizer chat template "
                             "(a Hugging Face id or local folder) instead of the raw text")
    render.set_defaults(func=_cmd_prompts_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from pipeline.datasets import AnnotationError
    from pipeline.demo.synth import MissingToolError
    from pipeline.run.runner import OutputWriteError
    from pipeline.store.lease import LeaseHeldError, LeaseLostError
    from pipeline.store.storage import StorageError
    from pipeline.store.version import DamagedOutputError, InputNotReadyError

    usage_errors = (ConfigError, AnnotationError, InputNotReadyError, FileNotFoundError)
    state_errors = (DamagedOutputError, LeaseHeldError, LeaseLostError, OutputWriteError, StorageError,
                    MissingToolError)
    try:
        return args.func(args)
    except usage_errors + state_errors as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())  # one line, whatever the library's message held
        print(f"tvr {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(exc, usage_errors) else 1


if __name__ == "__main__":
    sys.exit(main())
