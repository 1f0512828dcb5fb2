"""Every `tvr` command in the README and docs/ is a command that works (DESIGN.md: "docs or examples
that drift from the code ... run every documented command in a test").

Commands are the `tvr ...` lines (and `python -m jobs.run ...`, which is `tvr run`) of the shell
code blocks of README.md, docs/*.md and prompts/README.md. Each one must parse with the real
parser, and the repository files it names must exist and load (configs through `config.load`
with the dataclass the command uses, with its `--set` values). Those that can run cheaply on the
demo output run for real, on the session's one `tvr demo` (conftest.py), with the documented
placeholder paths pointed at it; the others are listed in PARSE_ONLY with why.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import config as config_lib
from pipeline.cli import build_parser, main
from pipeline.datasets import FORMATS
from pipeline.engines.prompts import list_prompts, load_prompt
from pipeline.flow import RunConfig
from pipeline.stages import STAGES
from pipeline.train.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "prompts" / "README.md"]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
INVOCATION = re.compile(r"(^|[\s;&|])(\S*/)?tvr(\s|$)|-m jobs\.run\b")
REPOSITORY_PATH = re.compile(r"^(jobs|prompts|docs|bench|pipeline|tests)/")

# Commands that need what a test cannot have: checked by parsing and loading what they name.
PARSE_ONLY = {
    "manifest": "reads a real dataset's annotations and videos (data/...); its format options are built",
    "run": "runs real models on a real dataset; its config and --set values are loaded, its stages named",
    "train": "trains on a real run's shards; its config and --set values are loaded",
    "export-tags": "the demo's manifest is generic, which MAC-VR's code has no tag files for; "
    "tests/test_tag_export.py runs it on planted msrvtt and didemo outputs",
    "demo": "the demo_out fixture runs it, with --out in a temporary folder",
}
# Commands run for real on the demo output (documented paths are pointed at it, see _runnable).
RUN_ON_DEMO = {"status", "verify", "stats", "eval", "prompts"}


@dataclass(frozen=True)
class Documented:
    where: str  # file:line
    argv: tuple[str, ...]  # the arguments after `tvr`

    def __str__(self) -> str:
        return f"{self.where}: tvr {shlex.join(self.argv)}"


def documented_commands() -> list[Documented]:
    found = []
    for document in DOCUMENTS:
        block = None  # the language of the fenced block we are in, or None outside one
        pending, start = "", 0
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
            if line.lstrip().startswith("```"):
                block = line.strip()[3:].strip() if block is None else None
                continue
            if block not in SHELL_BLOCKS:
                continue
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):  # a command continued on the next line
                pending += line.rstrip()[:-1] + " "
                continue
            text, pending = pending + line, ""
            if INVOCATION.search(text):  # untagged blocks also hold file layouts, which are not shell
                where = f"{document.relative_to(REPO)}:{start}"
                found += [Documented(where, argv) for argv in _tvr_invocations(text)]
    return found


def _tvr_invocations(text: str) -> list[tuple[str, ...]]:
    """The `tvr` argument lists of one shell line (`a && tvr x`, `... -- python -m jobs.run C`)."""
    commands, current = [], []
    for token in [*shlex.split(text, comments=True), "&&"]:
        if token not in ("&&", "||", ";"):
            current.append(token)
            continue
        if current and Path(current[0]).name == "tvr":
            commands.append(tuple(current[1:]))
        elif "jobs.run" in current and current[current.index("jobs.run") - 1] == "-m":
            commands.append(("run", *current[current.index("jobs.run") + 1 :]))  # jobs/run.py is `tvr run`
        current = []
    return commands


COMMANDS = documented_commands()


def test_the_documents_hold_the_commands_we_expect():
    # Guards the extraction: if it silently found nothing, every test below would pass vacuously.
    names = {command.argv[0] for command in COMMANDS}
    assert {"manifest", "run", "train", "eval", "status", "stats", "export-tags", "verify", "prompts", "demo"} <= names
    assert any(c.argv[:2] == ("prompts", "render") for c in COMMANDS)
    assert any(c.argv[0] == "run" and c.where.startswith("README.md") and "--stages" in c.argv for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses_and_names_real_files(command):
    check_statically(command)


def check_statically(command: Documented) -> None:
    """Fails the test unless `command` parses and every repository file it names exists and loads."""
    try:
        args = build_parser().parse_args(list(command.argv))
    except SystemExit as stop:
        pytest.fail(f"{command} does not parse (argparse exit {stop.code})")
    assert args.command in PARSE_ONLY or args.command in RUN_ON_DEMO, f"{command}: say how the test checks it"
    for token in command.argv:
        for path in [token, token.partition("=")[2]]:
            if REPOSITORY_PATH.match(path):
                assert (REPO / path).exists(), f"{command}: {path} is not in the repository"
    if args.command == "run":
        overrides = [*args.set, *([f"dataset.manifest={args.manifest}"] if args.manifest else [])]
        config_lib.load(RunConfig, REPO / args.config, overrides)
        assert set(args.stages or []) <= set(STAGES), f"{command}: no stage {set(args.stages) - set(STAGES)}"
    elif args.command == "train":
        config_lib.load(TrainConfig, REPO / args.config, args.set)
    elif args.command == "eval":  # what the docs evaluate is what a shipped training config writes
        configs = (REPO / "jobs" / "configs" / "train").glob("*.yaml")
        written = {config_lib.load(TrainConfig, path).output_dir for path in configs}
        assert args.checkpoint.rstrip("/") in written, f"{command}: no training config writes {args.checkpoint}"
    elif args.command == "manifest":
        config_lib.build(FORMATS[args.format].options, config_lib.apply_overrides({}, args.set), "--set")
    elif args.command == "prompts" and args.prompts_command == "render" and args.folder is None:
        assert args.name in list_prompts(REPO / "prompts"), f"{command}: no prompt {args.name} in prompts/"
        load_prompt(args.name, REPO / "prompts")


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        # The shorthand the README once had: `...` standing for the required options.
        ("tvr manifest msrvtt ... --set train_list=7k   # format options", pytest.fail.Exception, "does not parse"),
        ("tvr --debug status runs/msrvtt", None, None),  # the global form docs/outputs.md gives
        ("tvr run jobs/configs/nope.yaml", AssertionError, "jobs/configs/nope.yaml is not in the repository"),
        ("tvr train jobs/configs/train/msrvtt_xpool.yaml --set optim.epochz=1", config_lib.ConfigError, "epochz"),
        ("tvr run jobs/configs/msrvtt.yaml --stages keyframe", AssertionError, "no stage {'keyframe'}"),
        ("tvr prompts render macvr_textual_tag --caption x", AssertionError, "no prompt macvr_textual_tag"),
        ("tvr eval runs/train", AssertionError, "no training config writes runs/train"),  # the README's, once
    ],
)
def test_the_static_check_catches_drift(line, error, message):
    """The check is not vacuous: each kind of drift a document can have fails it."""
    (argv,) = _tvr_invocations(line)
    command = Documented("planted.md:1", argv)
    if error is None:
        check_statically(command)
        return
    with pytest.raises(error, match=re.escape(message)) as caught:
        check_statically(command)
    assert type(caught.value) is error


@pytest.fixture(scope="module")
def my_prompts(tmp_path_factory) -> Path:
    """prompts/README.md: "copy the folder, edit the copy and point the pipeline at it"."""
    copy = tmp_path_factory.mktemp("docs") / "my-prompts"
    shutil.copytree(REPO / "prompts", copy)
    return copy


def _runnable(argv: tuple[str, ...], demo_out: Path, my_prompts: Path) -> list[str]:
    """The documented arguments with their placeholder paths pointed at what the test has."""
    placeholders = {"runs/msrvtt": demo_out, "my-prompts/": my_prompts, "MODEL": demo_out / "models" / "tiny-lm"}
    pointed = []
    for token in argv:
        if re.fullmatch(r"runs/msrvtt-train/\w+", token):  # a training config's output_dir
            token = str(demo_out / "train")
        pointed.append(str(placeholders.get(token, token)))
    return pointed


RUNNABLE = [command for command in COMMANDS if command.argv[0] in RUN_ON_DEMO]


@pytest.mark.parametrize("command", RUNNABLE, ids=str)
def test_documented_command_runs_on_the_demo_output(command, demo_out, my_prompts, capsys):
    argv = _runnable(command.argv, demo_out, my_prompts)
    assert main(argv) == 0, f"{command} (run as tvr {shlex.join(argv)}):\n{capsys.readouterr()}"
    out = capsys.readouterr().out
    assert out.strip(), f"{command} printed nothing"
    if command.argv[0] == "verify":
        assert ": OK; checked" in out.splitlines()[-1], out
