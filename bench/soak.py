"""Soak: output integrity under faults. Real `tvr run` drivers on a generated dataset with broken files,
while worker processes and the driver are killed and a second driver tries to write the same version.

    python bench/soak.py --videos 2000 --broken 0.05

The dataset: `--pool` distinct short clips made with `pipeline.demo.synth` (several codecs and containers),
hard-linked (or copied) into `--videos` files, of which a `--broken` share is broken or damaged (zero
bytes, cut short, garbage bytes written over the middle, not a video at all), plus `--missing` captions
whose video file does not exist. A generic-format CSV and a YAML run config point `tvr run` at it.

The faults, each triggered by how many shards of a stage are committed (`STAGE:FRACTION`):
1. driver A (`tvr run CONFIG`, its own local Ray) starts;
2. `--worker-kills-at`: a Ray worker busy on a shard (`ray::MapBatches(...)`, in A's session) is
   SIGKILLed; the runner retries its shard, so a kill may cost at most the items in flight;
3. `--second-driver-at`: driver B starts on the same config while A holds the lease; it must stop
   at once (exit 1) with a message naming the holder ("is being written by");
4. `--driver-kill-at`: driver A and every process of its session (its local Ray) are SIGKILLed;
5. the same `tvr run CONFIG` again: it resumes ("resuming, N of M shards already committed") and
   finishes; the shards A committed must be kept as they were;
6. `tvr verify OUT` must exit 0.

Then the committed rows (`video_id`) and failures (`item_id`) of the final probe and keyframes
versions are compared with the video ids of the CSV: lost (an id in neither, must be 0), duplicated
(an id more than once across rows and failures, must be 0), and failures by reason, per injected
kind of damage. Results go to stdout as Markdown for BENCHMARKS.md (progress goes to stderr); the
exit status is 1 when any check fails (lost, duplicated, verify, or a fault that did not land).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pyarrow.dataset as ds
import yaml

from pipeline.demo import synth

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("probe", "keyframes")
MARKER = ".tvr-soak"  # marks a --data folder as ours, so its videos/ and out/ may be wiped

# Pool clips cycle through these formats; each clip also gets its own pattern, size and rate, so
# the pool's files all differ (and the decoders see several demuxers and codecs).
POOL_FORMATS = [
    (".mp4", dict(codec="libx264")),
    (".avi", dict(codec="mpeg4")),
    (".webm", dict(codec="libvpx-vp9")),
    (".avi", dict(codec="mjpeg")),
    (".mkv", dict(codec="libx264", gop_seconds=0.5)),
    (".mp4", dict(codec="libx264", audio=True)),
    (".mp4", dict(codec="libx264", rotation=90)),
]
SIZES = [(160, 120), (176, 144), (192, 108), (128, 96)]
RATES = [15, 25, 24, 10, 30]
LENGTHS = [1.0, 1.5, 2.0]

BROKEN_KINDS = ("zero-byte", "truncated", "damaged", "not a video")
KINDS = ("intact", *BROKEN_KINDS, "missing file")

# What a web server returns instead of the video, saved under the video's name.
HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
             b"<body><h1>Forbidden</h1><p>You don't have permission to access this resource.</p></body></html>\n")

# The stages under test: the feature stages would need a model, and add nothing to what is soaked.
STAGES_RUN = ("--stages", "probe", "keyframes")


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- the dataset ---------------------------------------------------------------------------------


def make_pool(folder: Path, count: int) -> list[Path]:
    """`count` distinct clips, kept in `folder` between runs (they depend only on their index)."""
    folder.mkdir(parents=True, exist_ok=True)
    patterns = list(synth.PATTERNS)
    specs = []
    for k in range(count):
        suffix, kwargs = POOL_FORMATS[k % len(POOL_FORMATS)]
        width, height = SIZES[k % len(SIZES)]
        specs.append((folder / f"pool{k:03d}{suffix}",
                      dict(kwargs, seconds=LENGTHS[k % len(LENGTHS)], width=width, height=height,
                           fps=RATES[k % len(RATES)], pattern=patterns[(k + k // len(patterns)) % len(patterns)])))

    def make(spec):
        path, kwargs = spec
        if not path.exists():  # ffmpeg writes in place: a clip cut short by a crash would be reused
            partial = path.with_name(f"partial-{path.name}")
            synth.make_clip(partial, **kwargs)
            partial.rename(path)
        return path

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # ffmpeg subprocesses: threads suffice
        return list(pool.map(make, specs))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # 2,000 files at the cost of the pool's bytes
    except OSError:
        shutil.copyfile(src, dst)


def make_dataset(data: Path, pool: list[Path], videos: int, broken: float, missing: int,
                 seed: int) -> tuple[Path, dict[str, str]]:
    """Write `data/videos/` and `data/captions.csv`; returns the CSV and each video id's kind."""
    folder = data / "videos"
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    damaged_ids = rng.sample(range(videos), round(videos * broken))
    kind_of = {i: BROKEN_KINDS[n % len(BROKEN_KINDS)] for n, i in enumerate(sorted(damaged_ids))}
    kinds, rows = {}, []
    for i in range(videos + missing):
        video_id = f"v{i:05d}"
        kind = "missing file" if i >= videos else kind_of.get(i, "intact")
        source = pool[i % len(pool)]
        path = folder / f"{video_id}{source.suffix}"
        if kind == "intact":
            _link_or_copy(source, path)
        elif kind == "zero-byte":
            synth.make_zero_byte(path)
        elif kind == "truncated":
            synth.make_truncated(source, path, rng.uniform(0.3, 0.7))
        elif kind == "damaged":  # the container is whole; a tenth of its bytes in the middle is noise
            data_ = bytearray(source.read_bytes())
            length = max(64, len(data_) // 10)
            start = int(len(data_) * rng.uniform(0.3, 0.6))
            data_[start:start + length] = rng.randbytes(length)
            path.write_bytes(bytes(data_))
        elif kind == "not a video":
            if i % 2:
                synth.make_garbage(path, size=rng.randint(1_000, 200_000), seed=i)
            else:
                path.write_bytes(HTML_PAGE)
        kinds[video_id] = kind
        split = ("train", "val", "test")[i % 3]
        rows.append((video_id, path.name, f"clip {i} made from {source.stem} ({kind})", split))
    annotations = data / "captions.csv"
    with annotations.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption", "split"])
        writer.writerows(rows)
    return annotations, kinds


def write_config(data: Path, annotations: Path, args) -> Path:
    config = data / "run.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(data / "out"),
        "dataset": {"format": "generic", "annotations": str(annotations), "videos": str(data / "videos")},
        "runner": {"rows_per_shard": args.rows_per_shard, "max_workers": args.workers, "progress": False},
        "keyframes": {"sampling": {"strategy": "uniform", "num_frames": args.frames}, "short_side": args.short_side},
    }, sort_keys=False))
    return config


# ---- processes -----------------------------------------------------------------------------------


def session_processes(sid: int) -> dict[int, str]:
    """Live processes of a session, pid -> command line (a Ray worker's is its title, `ray::...`).

    A driver started with start_new_session leads its session; its local Ray (GCS, raylet,
    workers) stays in that session, but each worker has a process group of its own, so killing
    the driver's group is not enough to clean up."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
            if int(session) != sid or state == "Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # gone between listing and reading
        found[int(entry)] = cmdline.strip()
    return found


def kill_session(sid: int, timeout: float = 30.0) -> int:
    """SIGKILL every process of the session until none is left; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while procs := session_processes(sid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of session {sid} survive SIGKILL: {procs}")
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return len(killed)


@dataclass
class Driver:
    """One `tvr` subprocess in a session of its own, its output in a log file."""

    name: str
    args: list[str]
    logs: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    cleaned: bool = False  # its session was emptied; never look again (an empty session's id may be reused)

    def start(self) -> "Driver":
        env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, never a cluster the caller has
        self.log_path = self.logs / f"{self.name}.log"
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.args], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()
        return self

    def poll(self) -> int | None:
        if self.returncode is None and self.proc.poll() is not None:
            self.returncode, self.ended = self.proc.returncode, time.monotonic()
        return self.returncode

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"{self.name} did not finish within {timeout:.0f} s; see {self.log_path}")
        return self.poll()

    def kill(self) -> int:
        """SIGKILL the driver first (so it cannot react), then what is left of its session."""
        killed = 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            killed = 1
        self.proc.wait()
        self.poll()
        if not self.cleaned:
            killed += kill_session(self.proc.pid)
            self.cleaned = True
        return killed

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


# ---- watching the output -------------------------------------------------------------------------


@dataclass
class StageProgress:
    version: str | None = None
    num_shards: int | None = None
    committed: int = 0

    @property
    def complete(self) -> bool:
        return self.num_shards is not None and self.committed >= self.num_shards

    def describe(self, stage: str) -> str:
        if self.num_shards is None:
            return f"{stage} not started"
        return f"{stage} {self.committed}/{self.num_shards} shards committed"


def progress(out: Path, known: dict[str, StageProgress]) -> dict[str, StageProgress]:
    """How many shards of each stage are committed (commit records), read cheaply enough to poll."""
    for stage in STAGES:
        state = known.setdefault(stage, StageProgress())
        if state.num_shards is None:
            for manifest in (out / stage).glob("*/_manifest.json"):
                try:
                    record = json.loads(manifest.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                state.version, state.num_shards = record["version"], record["num_shards"]
        if state.version is not None:
            try:
                names = os.listdir(out / stage / state.version / "_commits")
            except FileNotFoundError:
                names = []
            state.committed = sum(1 for n in names if n.startswith("part-") and n.endswith(".json"))
    return known


def commit_records(out: Path, stage: str, version: str) -> dict[str, str]:
    """Shard record name -> its commit time, to show that a resume leaves committed shards alone."""
    records = {}
    for path in (out / stage / version / "_commits").glob("part-*.json"):
        records[path.name] = json.loads(path.read_text())["committed"]
    return records


@dataclass
class Trigger:
    what: str  # "worker", "second driver", "driver"
    stage: str
    fraction: float
    fired_at: str | None = None

    def reached(self, state: dict[str, StageProgress]) -> bool:
        mine = state[self.stage]
        if mine.num_shards is not None and mine.committed >= max(1, math.ceil(self.fraction * mine.num_shards)):
            return True
        # Already past it (a later stage has begun): fire now rather than never.
        return any(state[s].num_shards is not None for s in STAGES[STAGES.index(self.stage) + 1:])


def parse_point(text: str) -> tuple[str, float]:
    stage, _, fraction = text.partition(":")
    try:
        value = float(fraction)
    except ValueError:
        value = -1.0
    if stage not in STAGES or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected STAGE:FRACTION with STAGE one of {', '.join(STAGES)} "
                                         "and 0 <= FRACTION < 1, e.g. keyframes:0.5")
    return stage, value


# ---- the soak ------------------------------------------------------------------------------------


@dataclass
class Soak:
    config: Path
    out: Path
    logs: Path
    timeout: float
    started: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # failed checks: the exit status is 1
    notes: list[str] = field(default_factory=list)  # worth saying, but no failure of the output
    drivers: list[Driver] = field(default_factory=list)
    worker_kills: int = 0
    # Commit records of the stage A was killed in, as A left them: (stage, version) -> {record: committed}.
    before_kill: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    kept: tuple[str, int, int] = ("", 0, 0)  # that stage, its shards A committed, and how many the rerun kept
    resumed: str = ""
    verify_line: str = ""
    verify_rc: int | None = None
    finished: bool = False  # the rerun completed every stage, so there are final versions to count

    def event(self, text: str) -> None:
        self.events.append((time.monotonic() - self.started, text))
        log(text)

    def driver(self, name: str, *args: str) -> Driver:
        driver = Driver(name, list(args), self.logs).start()
        self.drivers.append(driver)
        return driver

    def cleanup(self) -> None:
        for driver in self.drivers:
            if driver.proc is not None:
                driver.kill()

    def run_faulted(self, triggers: list[Trigger]) -> None:
        """Driver A with the faults in `triggers` (in run order, the driver kill last)."""
        a = self.driver("driver-A", "run", str(self.config), *STAGES_RUN)
        self.event("driver A started: `tvr run CONFIG --stages probe keyframes`")
        b: Driver | None = None
        state: dict[str, StageProgress] = {}
        marks: dict[str, float] = {}  # milestones of driver A, seconds since it started
        pending = list(triggers)
        deadline = time.monotonic() + self.timeout
        while pending:
            progress(self.out, state)
            if state["probe"].committed and "first" not in marks:
                marks["first"] = a.seconds
            if state["probe"].complete and "probe" not in marks:
                marks["probe"] = a.seconds
            if b is not None and b.returncode is None and b.poll() is not None:
                self._second_driver_done(b)
            if a.poll() is not None:
                self.problems.append(f"driver A exited ({a.returncode}) before these faults: "
                                     f"{', '.join(f'{t.what} at {t.stage}:{t.fraction}' for t in pending)}")
                self.event(f"driver A exited {a.returncode} on its own; faults not made: {len(pending)}")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"driver A made no progress to its faults within {self.timeout:.0f} s")
            trigger = pending[0]
            if trigger.reached(state):
                where = "; ".join(state[s].describe(s) for s in STAGES)
                if trigger.what == "worker":
                    victim = self._busy_worker(a)
                    if victim is not None:  # else between shards: look again at the next poll
                        pid, title = victim
                        os.kill(pid, signal.SIGKILL)
                        self.worker_kills += 1
                        self.event(f"worker pid {pid} `{title}` SIGKILLed ({where})")
                        pending.pop(0)
                elif trigger.what == "second driver":
                    b = self.driver("driver-B", "run", str(self.config), *STAGES_RUN)
                    self.event(f"driver B started on the same config ({where})")
                    pending.pop(0)
                elif trigger.what == "driver" and (b is None or b.returncode is not None):
                    # Only once B is gone: B would otherwise take A's lease over and become the resumer.
                    killed = a.kill()
                    self.event(f"driver A SIGKILLed with its session, {killed} processes ({where})")
                    if state[trigger.stage].complete:
                        self.problems.append(f"driver A was killed after {trigger.stage} had finished")
                    # Read once A is dead, so nothing commits after the snapshot.
                    self.before_kill = {(s, state[s].version): commit_records(self.out, s, state[s].version)
                                    for s in STAGES if state[s].version and not state[s].complete}
                    pending.pop(0)
            time.sleep(0.01)
        # Ray's start-up and the manifest come before the first commit; A's figures are to its kill.
        first, probe = marks.get("first", a.seconds), marks.get("probe", a.seconds)
        self.phases["driver A: start to its first probe commit (manifest, Ray start-up)"] = first
        self.phases["driver A: probe"] = probe - first
        self.phases["driver A: keyframes until it was killed"] = a.seconds - probe
        if b is not None and b.returncode is None:
            b.wait(self.timeout)
            self._second_driver_done(b)

    def _busy_worker(self, driver: Driver) -> tuple[int, str] | None:
        for pid, title in sorted(session_processes(driver.proc.pid).items()):
            if title.startswith("ray::MapBatches("):  # a task worker on a shard (idle ones read ray::IDLE)
                return pid, title
        return None

    def _second_driver_done(self, b: Driver) -> None:
        b.kill()  # nothing should be left (it stops before starting Ray); its session is emptied once
        text = b.output()
        errors = [line for line in text.splitlines() if "error:" in line]
        message = errors[-1] if errors else (text.strip().splitlines() or [""])[-1]
        self.event(f"driver B exited {b.returncode} after {b.seconds:.1f} s: `{_short(message, 400)}`")
        self.phases["driver B, while A runs: start to refusal"] = b.seconds
        if b.returncode != 1 or "is being written by" not in text:
            self.problems.append(f"driver B was not refused with a message naming the lease holder "
                                 f"(exit {b.returncode}); see {b.log_path}")

    def rerun(self) -> None:
        c = self.driver("rerun", "run", str(self.config), *STAGES_RUN)
        self.event("rerun started: `tvr run CONFIG --stages probe keyframes`")
        rc = c.wait(self.timeout)
        c.kill()  # its Ray shuts down at exit; whatever lingers is ours to end
        text = c.output()
        match = re.search(r"resuming, (\d+) of (\d+) shards already committed", text)
        self.resumed = match.group(0) if match else ""
        self.phases["rerun: start to completion (Ray start-up, the rest of the work)"] = c.seconds
        self.event(f"rerun exited {rc} after {c.seconds:.1f} s" + (f": {self.resumed}" if match else ""))
        self.finished = rc == 0
        if rc != 0:
            self.problems.append(f"the rerun failed (exit {rc}): {_short(text.strip(), 2000)}")
        if not match:
            self.problems.append("the rerun did not say it resumed")
        for (stage, version), before in self.before_kill.items():
            after = commit_records(self.out, stage, version)
            same = sum(1 for name, committed in before.items() if after.get(name) == committed)
            self.kept = (stage, len(before), same)
            if same != len(before):
                self.problems.append(f"{stage}: {len(before) - same} shards committed before the kill were "
                                     "recomputed or withdrawn")

    def verify(self) -> None:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(self.out)], cwd=ROOT,
                              capture_output=True, text=True, timeout=self.timeout)
        self.phases["tvr verify"] = time.monotonic() - started
        lines = (done.stdout + done.stderr).strip().splitlines()
        self.verify_rc, self.verify_line = done.returncode, lines[-1] if lines else ""
        self.event(f"`tvr verify OUT` exited {done.returncode}: {self.verify_line}")
        if done.returncode != 0:
            self.problems.append("tvr verify failed:\n" + "\n".join(lines[-30:]))


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- counting --------------------------------------------------------------------------------------


@dataclass
class StageCount:
    version: str
    rows: int
    failures: Counter
    lost: list[str]
    duplicated: list[str]
    foreign: list[str]
    outcome: dict[str, str]  # video id -> "row" or its failure reason


def count_stage(out: Path, stage: str, version: str, expected: set[str]) -> StageCount:
    rows = ds.dataset(out / stage / version, format="parquet").to_table(columns=["video_id"])
    failed = ds.dataset(out / "failures" / stage / version, format="parquet").to_table(columns=["item_id", "reason"])
    row_ids = rows.column("video_id").to_pylist()
    failed_ids, reasons = failed.column("item_id").to_pylist(), failed.column("reason").to_pylist()
    seen = Counter(row_ids + failed_ids)
    outcome = {i: "row" for i in row_ids} | dict(zip(failed_ids, reasons))
    return StageCount(version, len(row_ids), Counter(reasons), sorted(expected - set(seen)),
                      sorted(i for i, n in seen.items() if n > 1), sorted(set(seen) - expected), outcome)


def count(out: Path, kinds: dict[str, str]) -> dict[str, StageCount]:
    keyframes = (out / "keyframes" / "LATEST").read_text().strip()
    manifest = json.loads((out / "keyframes" / keyframes / "_manifest.json").read_text())
    # The probe version the keyframes version read, not whatever probe/LATEST says.
    versions = {"probe": manifest["identity"]["inputs"]["probe"], "keyframes": keyframes}
    return {stage: count_stage(out, stage, versions[stage], set(kinds)) for stage in STAGES}


# ---- the report ------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    ffmpeg = " ".join(ffmpeg.split()[:3])
    return (f"{platform.machine()} {platform.system()} ({platform.platform()}), {os.cpu_count()} cores, "
            f"{memory:.0f} GiB; Python {platform.python_version()}, {ffmpeg}, Ray {_version('ray')}, "
            f"pyarrow {_version('pyarrow')}, decord {_version('decord')}, PyAV {_version('av')}")


def code_hash() -> str:
    """A hash of pipeline/*.py as it is on disk, uncommitted edits included: the code the drivers import."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def code_fingerprint() -> str:
    """The commit, whether pipeline/ differs from it, and `code_hash`."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", []
    edits = f" + uncommitted changes in {len(dirty)} files under pipeline/" if dirty else ""
    return f"commit {head}{edits} (pipeline/*.py sha256 {code_hash()})"


# Phases in the order they happen (driver B runs while driver A does).
PHASE_ORDER = ("generate", "driver A", "driver B", "rerun", "tvr verify", "count")


def _phase_order(item: tuple[str, float]) -> int:
    return next((k for k, prefix in enumerate(PHASE_ORDER) if item[0].startswith(prefix)), len(PHASE_ORDER))


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def _ids(ids: list[str]) -> str:
    return f"{len(ids)}" + (f" ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})" if ids else "")


def render(args, soak: Soak, kinds: dict[str, str], counts: dict[str, StageCount] | None, header: dict) -> str:
    kind_totals = Counter(kinds.values())
    lines = [
        "```bash",
        header["command"],
        "```",
        "",
        f"- Machine: {header['machine']}.",
        f"- Code: {header['code']}.",
        f"- Input: {len(kinds):,} video ids in a generic CSV: {args.videos:,} files hard-linked from {args.pool} "
        f"generated clips ({args.pool_desc}), of which {sum(kind_totals[k] for k in BROKEN_KINDS)} broken "
        f"({', '.join(f'{k} {kind_totals[k]}' for k in BROKEN_KINDS)}), plus {kind_totals['missing file']} "
        f"caption(s) whose video file is missing.",
        f"- Run: probe + keyframes (uniform, {args.frames} frames, short side {args.short_side}), "
        f"`rows_per_shard={args.rows_per_shard}`, `max_workers={args.workers}`, each driver with its own local Ray.",
        "",
        "| t (s) | event |",
        "|---|---|",
        *[f"| {t:.1f} | {text} |" for t, text in soak.events],
    ]
    if counts is not None:
        probe, keyframes = counts["probe"], counts["keyframes"]
        crashed = sum(c.failures["worker_crashed"] for c in counts.values())
        intact_failed = sum(1 for i, kind in kinds.items() if kind == "intact" and keyframes.outcome.get(i) != "row")
        lines += [
            "",
            f"| | probe `{probe.version}` | keyframes `{keyframes.version}` |",
            "|---|---|---|",
            f"| items (video ids in the CSV) | {len(kinds):,} | {len(kinds):,} |",
            f"| rows | {probe.rows:,} | {keyframes.rows:,} |",
            f"| failures | {sum(probe.failures.values()):,} | {sum(keyframes.failures.values()):,} |",
            f"| failures by reason | {_reasons(probe.failures)} | {_reasons(keyframes.failures)} |",
            f"| lost (must be 0) | {_ids(probe.lost)} | {_ids(keyframes.lost)} |",
            f"| duplicated (must be 0) | {_ids(probe.duplicated)} | {_ids(keyframes.duplicated)} |",
            f"| not in the CSV (must be 0) | {_ids(probe.foreign)} | {_ids(keyframes.foreign)} |",
            "",
            "Outcome per injected kind (rows, and failures by reason):",
            "",
            "| injected | videos | probe | keyframes |",
            "|---|---|---|---|",
        ]
        for kind in KINDS:
            ids = [i for i, k in kinds.items() if k == kind]
            if ids:
                cells = [_reasons(Counter(counts[s].outcome.get(i, "lost") for i in ids)) for s in STAGES]
                lines.append(f"| {kind} | {len(ids):,} | {cells[0]} | {cells[1]} |")
        lines += [
            "",
            f"- Worker kills: {soak.worker_kills}; items failed as `worker_crashed`: {crashed}; intact videos "
            f"without keyframes: {intact_failed} (a kill may cost at most the {args.rows_per_shard} items of "
            "its shard).",
            f"- Shards of {soak.kept[0] or 'the stage'} driver A had committed when it was killed: {soak.kept[1]}; "
            f"left as they were by the rerun: {soak.kept[2]}.",
        ]
    total = time.monotonic() - header["started"]
    lines += [
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in sorted(soak.phases.items(), key=_phase_order)],
        f"| total | {total:.1f} |",
        "",
        "**Result: PASS**" if not soak.problems else
        "**Result: FAIL**\n\n" + "\n".join(f"- {p}" for p in soak.problems),
        *[f"\nNote: {note}" for note in soak.notes],
    ]
    return "\n".join(lines)


def check(soak: Soak, kinds: dict[str, str], counts: dict[str, StageCount], rows_per_shard: int) -> None:
    for stage, c in counts.items():
        for label, ids in (("lost", c.lost), ("duplicated", c.duplicated), ("not in the CSV", c.foreign)):
            if ids:
                soak.problems.append(f"{stage}: {len(ids)} {label}: {ids[:10]}")
    intact_failed = [i for i, k in kinds.items() if k == "intact" and counts["keyframes"].outcome.get(i) != "row"]
    if len(intact_failed) > soak.worker_kills * rows_per_shard:
        soak.problems.append(f"{len(intact_failed)} intact videos have no keyframes, more than the "
                             f"{soak.worker_kills} worker kills x {rows_per_shard} items in flight: "
                             f"{intact_failed[:10]}")


def prepare(data: Path) -> None:
    """A --data folder is ours if it is empty or carries the marker; its runs are wiped, its pool kept."""
    if data.exists() and any(data.iterdir()) and not (data / MARKER).exists():
        raise SystemExit(f"{data} is not empty and was not made by bench/soak.py; give an empty or new folder")
    data.mkdir(parents=True, exist_ok=True)
    (data / MARKER).touch()
    for name in ("videos", "out", "logs"):
        shutil.rmtree(data / name, ignore_errors=True)
    (data / "logs").mkdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000, help="video files in the dataset")
    parser.add_argument("--broken", type=float, default=0.05, help="share of the files that are broken or damaged")
    parser.add_argument("--missing", type=int, default=None,
                        help="extra captions whose video file is missing (default: 0.5%% of --videos, at least 1)")
    parser.add_argument("--pool", type=int, default=28, help="distinct generated clips the files are made from")
    parser.add_argument("--rows-per-shard", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runner.max_workers")
    parser.add_argument("--frames", type=int, default=4, help="uniform keyframes per video")
    parser.add_argument("--short-side", type=int, default=64, help="keyframes.short_side")
    parser.add_argument("--worker-kills-at", type=parse_point, nargs="*", metavar="STAGE:FRACTION",
                        default=[("probe", 0.3), ("keyframes", 0.1)],
                        help="one worker kill at each point (default: probe:0.3 keyframes:0.1)")
    parser.add_argument("--second-driver-at", type=parse_point, default=("keyframes", 0.2), metavar="STAGE:FRACTION")
    parser.add_argument("--driver-kill-at", type=parse_point, default=("keyframes", 0.5), metavar="STAGE:FRACTION")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one driver may take")
    parser.add_argument("--data", default=None, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    if args.missing is None:
        args.missing = max(1, round(args.videos * 0.005))
    args.pool_desc = ", ".join(sorted({f"{kw['codec']} {suffix}" for suffix, kw in POOL_FORMATS[: args.pool]})) + \
        f", {min(LENGTHS):g}-{max(LENGTHS):g} s, {min(w for w, _ in SIZES)}-{max(w for w, _ in SIZES)} px wide"
    header = {"command": "python bench/soak.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "machine": machine(), "code": code_fingerprint(), "code_hash": code_hash(), "started": time.monotonic()}

    points = sorted([("worker", *p) for p in args.worker_kills_at] + [("second driver", *args.second_driver_at)],
                    key=lambda t: (STAGES.index(t[1]), t[2]))
    triggers = [Trigger(*t) for t in points] + [Trigger("driver", *args.driver_kill_at)]
    if (STAGES.index(triggers[-2].stage), triggers[-2].fraction) >= (STAGES.index(args.driver_kill_at[0]),
                                                                     args.driver_kill_at[1]):
        parser.error("--driver-kill-at must come after the worker kills and the second driver")
    scratch = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="tvr-soak-"))
    prepare(scratch)
    soak = Soak(config=scratch / "run.yaml", out=scratch / "out", logs=scratch / "logs", timeout=args.timeout)
    counts = None
    kinds: dict[str, str] = {}
    try:
        started = header["started"]
        pool = make_pool(scratch / "pool", args.pool)
        annotations, kinds = make_dataset(scratch, pool, args.videos, args.broken, args.missing, args.seed)
        write_config(scratch, annotations, args)
        soak.phases["generate the dataset"] = time.monotonic() - started
        soak.started = time.monotonic()  # event times count from driver A's start
        log(f"{len(kinds)} video ids in {scratch}; starting driver A")
        soak.run_faulted(triggers)
        soak.rerun()
        soak.verify()
        started = time.monotonic()
        if soak.finished:
            counts = count(soak.out, kinds)
            check(soak, kinds, counts, args.rows_per_shard)
        else:
            soak.problems.append("rows and failures not counted: the rerun did not finish the run")
        soak.phases["count rows and failures"] = time.monotonic() - started
    except Exception as exc:  # noqa: BLE001 - reported with what was measured so far
        soak.problems.append(f"the soak stopped: {type(exc).__name__}: {exc}")
    finally:
        soak.cleanup()
    if code_hash() != header["code_hash"]:  # not a fault of the output, but the figures mix two versions
        soak.notes.append(f"pipeline/ changed during the soak (now {code_fingerprint()}): the drivers may "
                          "have run different code; rerun for a figure of one version")
    print(render(args, soak, kinds, counts, header))
    if soak.problems:
        log(f"kept for a look: {scratch} (the drivers' logs are in {soak.logs})")
    elif not args.data:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if soak.problems else 0


if __name__ == "__main__":
    sys.exit(main())
