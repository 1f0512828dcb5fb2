"""Mutation testing of the modules that carry the pipeline's promises, with mutmut.

Each group mutates one module (mutmut changes one operator, constant or call at a time) and runs
only the tests named for it, which must not start Ray: mutmut runs them once per mutant. A
mutant is killed when a test fails. Every group runs in its own copy of the repository, so
mutmut's `mutants/` folder and `[tool.mutmut]` section never touch the checkout.

    python bench/mutation.py                      # every group; a table for BENCHMARKS.md
    python bench/mutation.py --group sampling     # one group
    python bench/mutation.py --group tags --survivors   # and show each surviving mutant's diff

Equivalent mutants (no behaviour changes, so no test can kill them) are listed in EQUIVALENT with
the reason; the score counts them apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Group:
    module: str  # the file mutated, relative to the repository
    tests: tuple[str, ...]  # the tests run against each mutant (no Ray)


GROUPS = {
    "version": Group("pipeline/store/version.py", ("tests/faults/test_version_folder.py",)),
    "verify": Group("pipeline/store/verify.py", ("tests/faults/test_verify_findings.py",)),
    "lease": Group("pipeline/store/lease.py", ("tests/faults/test_lease.py",)),
    "sampling": Group("pipeline/decode/sampling.py", ("tests/test_sampling.py", "tests/test_key_images.py")),
    "damage": Group("pipeline/decode/keyframes.py", ("tests/faults/test_clean_reader.py",)),
    "tags": Group("pipeline/tags/parse.py", ("tests/test_tags.py", "tests/test_tag_parse_rules.py")),
    "metrics": Group("pipeline/train/metrics.py", ("tests/test_train_metrics.py",)),
}

# mutant name -> why no test can tell it from the original.
_SAMPLING = "pipeline.decode.sampling."
_METRICS = "pipeline.train.metrics."
EQUIVALENT: dict[str, str] = {
    # pipeline/decode/sampling.py
    _SAMPLING + "x_choose_frames__mutmut_3": "asarray without float64: sources give float64, and float32, int or "
    "Fraction timestamps give the same frames (checked over 23.976-60 fps clips, ms-rounded, 0 and 1 h offsets)",
    _SAMPLING + "x_choose_frames__mutmut_5": "as x_choose_frames__mutmut_3 (dtype argument dropped)",
    _SAMPLING + "x_choose_frames__mutmut_51": "Fps max_frames: > to >=; with len == max_frames, "
    "segment_centres(F, F) is 0..F-1, so subsampling keeps every index",
    _SAMPLING + "x_choose_frames__mutmut_61": "Vlm linspace dtype=int to floats: choose_frames applies int() to "
    "each index, which truncates non-negative values as dtype=int does",
    _SAMPLING + "x_choose_frames__mutmut_65": "as x_choose_frames__mutmut_61 (dtype argument dropped)",
    _SAMPLING + "x__random_in_segment__mutmut_2": "k*F/n instead of //: Generator.integers truncates float bounds, "
    "the same as floor division for non-negative values (checked for F < 60, n < 20, every k)",
    _SAMPLING + "x__random_in_segment__mutmut_9": "as x__random_in_segment__mutmut_2, for the segment's stop",
    _SAMPLING + "x__at_rate__mutmut_21": "searchsorted side='left' dropped: 'left' is the default",
    _SAMPLING + "x__disparity__mutmut_83": "argsort kind 'stable' to 'STABLE': NumPy reads the kind case-insensitively",
    _SAMPLING + "x__disparity__mutmut_50": "gap >= 0 for gap > 0: the gap is exactly 0 only when min_gap_seconds "
    "equals the slack, and then every frame is a gap from every other, so with no more frames than asked all "
    "are kept either way (cuts read, not used)",
    _SAMPLING + "x__disparity__mutmut_34": "keep's first refusal returning True: only _add_farthest reads keep's "
    "answer, and it offers only unchosen frames a gap from every chosen one while fewer than target are chosen, "
    "so that refusal never happens there",
    _SAMPLING + "x__add_farthest__mutmut_14": "chosen frames' distance NaN instead of -inf: NaN >= gap is False, so "
    "they are left out of the offers either way",
    _SAMPLING + "x__add_farthest__mutmut_18": "argsort kind 'stable' to None (quicksort): it kept equal distances in "
    "frame order on every tie tried (10 fps, 17-400 frames, every chosen frame); 'stable' guarantees it on every "
    "NumPy build",
    _SAMPLING + "x__add_farthest__mutmut_20": "as x__add_farthest__mutmut_18 (kind dropped)",
    _SAMPLING + "x__add_farthest__mutmut_23": "argsort kind 'stable' to 'STABLE': NumPy reads the kind "
    "case-insensitively",
    _SAMPLING + "x__add_farthest__mutmut_29": "the message of a RuntimeError no input reaches: keep accepts only "
    "frames that leave room for the rest, so a completion's frames are always there to take",
    _SAMPLING + "x__add_farthest__mutmut_30": "as x__add_farthest__mutmut_29 (the message's chosen list)",
    _SAMPLING + "x__next_apart__mutmut_14": "searchsorted side='left' dropped: 'left' is the default",
    _SAMPLING + "x__next_apart__mutmut_15": "searchsorted on t_i - gap: the start is then i + 1, and the forward "
    "walk reaches the same first frame a gap away (searchsorted only skips steps)",
    _SAMPLING + "x__next_apart__mutmut_20": "the step back, a guard against rounding: it runs only when "
    "fl(t_j - t_i) >= gap while t_j < fl(t_i + gap), which a one-off search of 10 million random pairs "
    "(0-4000 s, gaps 0.1-1 s, 2026-12-08) never found",
    _SAMPLING + "x__next_apart__mutmut_31": "as x__next_apart__mutmut_20 (the step back's test)",
    _SAMPLING + "x__next_apart__mutmut_32": "as x__next_apart__mutmut_20 (the step back's body)",
    _SAMPLING + "x__next_apart__mutmut_33": "as x__next_apart__mutmut_20 (the step back's body)",
    _SAMPLING + "x__next_apart__mutmut_34": "as x__next_apart__mutmut_20 (the step back's body)",
    _SAMPLING + "x__room__mutmut_4": "counting from frame 1 with no frame before: that stretch ends at the first "
    "chosen frame, and frame 0 is always chosen first (its change score is infinite; with nothing read, the "
    "first uniform frame of a video no longer than asked is frame 0), so the stretch is empty either way",
    _SAMPLING + "x__room__mutmut_14": "end at the video's end also when a frame closes the stretch: with a gap "
    "above 0 the walk stops at that frame (the next frame a gap away is never beyond it); with a gap at or below "
    "0 every stretch has room for every frame asked, counted or overcounted up to the cap",
    # pipeline/train/metrics.py
    _METRICS + "x__targets__mutmut_9": "arange(shape[1]) for the diagonal: only reached when the matrix is square",
    _METRICS + "x_video_to_text_metrics__mutmut_17": "argsort of the caption groups not stable: the order of "
    "captions within a group does not change the group's max",
    _METRICS + "x_video_to_text_metrics__mutmut_19": "as x_video_to_text_metrics__mutmut_17 (kind dropped)",
    _METRICS + "x_video_to_text_metrics__mutmut_21": "argsort kind 'STABLE': NumPy reads the kind case-insensitively",
    _METRICS + "x_video_to_text_metrics__mutmut_34": "reduceat axis=0 dropped: 0 is the default",
    # pipeline/store/version.py
    "pipeline.store.version.xǁVersionǁmanifest__mutmut_8": "decode 'UTF-8' for 'utf-8': Python's codec names "
    "are case-insensitive",
    "pipeline.store.version.xǁVersionǁread_record__mutmut_7": "as xǁVersionǁmanifest__mutmut_8",
    "pipeline.store.version.xǁVersionǁmark_latest__mutmut_6": "and to or: with no LATEST it reads the record of "
    "version 'None' (none: a version is a hex hash) and points LATEST; when LATEST is ours it points it again",
    "pipeline.store.version.xǁVersionǁmark_latest__mutmut_25": "their finished's default: read only when theirs is "
    "complete, and manifest_problem refuses a complete record without finished",
    "pipeline.store.version.xǁVersionǁmark_latest__mutmut_27": "as xǁVersionǁmark_latest__mutmut_25",
    "pipeline.store.version.xǁVersionǁmark_latest__mutmut_30": "as xǁVersionǁmark_latest__mutmut_25",
    "pipeline.store.version.xǁVersionǁwrite_plan__mutmut_6": "i / rows_per_shard into int32: pyarrow truncates the "
    "non-negative quotient, the same as // (exact for every int32 item index)",
    "pipeline.store.version.xǁVersionǁrecord_names__mutmut_7": "suffix '.json' dropped: RECORD_NAME's fullmatch "
    "takes only names ending in .json",
    "pipeline.store.version.xǁVersionǁcheck_committed__mutmut_15": "deep=None for False: both falsy",
    "pipeline.store.version.xǁVersionǁtable__mutmut_1": "failures=None for False: both falsy",
    "pipeline.store.version.xǁVersionǁlocations__mutmut_7": "reads every column of a part, then takes the key: the "
    "same locations, only more bytes read",
    "pipeline.store.version.xǁVersionǁlocations__mutmut_9": "as xǁVersionǁlocations__mutmut_7",
    "pipeline.store.version.xǁVersionǁ_read__mutmut_11": "ds.dataset format=None: it defaults to parquet",
    "pipeline.store.version.xǁVersionǁ_read__mutmut_14": "as xǁVersionǁ_read__mutmut_11 (format dropped)",
    # pipeline/store/verify.py
    "pipeline.store.verify.x__verify_version__mutmut_78": "record.get('items', None): read_record has checked "
    "items is a whole number, so the default is never used",
    "pipeline.store.verify.x__verify_version__mutmut_80": "as x__verify_version__mutmut_78 (default dropped)",
    "pipeline.store.verify.x__verify_version__mutmut_83": "as x__verify_version__mutmut_78 (default 1)",
    "pipeline.store.verify.x__verify_version__mutmut_116": "wrong_totals = None: only ever read as a truth value",
    "pipeline.store.verify.x__check_plan__mutmut_10": "a partial version without plan reported plan_bad: repair "
    "then removes no plan (there is none) and marks nothing partial (it is), so nothing changes",
    "pipeline.store.verify.x__shard_problem__mutmut_47": "reading every column of the rows part, then taking the "
    "key column, gives the same ids (only slower)",
    "pipeline.store.verify.x__shard_problem__mutmut_49": "as x__shard_problem__mutmut_47 (columns dropped)",
    "pipeline.store.verify.x__shard_problem__mutmut_56": "as x__shard_problem__mutmut_47, for the failures part",
    "pipeline.store.verify.x__shard_problem__mutmut_58": "as x__shard_problem__mutmut_56 (columns dropped)",
    "pipeline.store.verify.x__verify_latest__mutmut_16": "finished default None: a complete record always has "
    "finished (manifest_problem refuses one without), so the default is never used",
    "pipeline.store.verify.x__verify_latest__mutmut_18": "as x__verify_latest__mutmut_16 (default dropped)",
    "pipeline.store.verify.x__verify_latest__mutmut_21": "as x__verify_latest__mutmut_16 (default 'XXXX')",
    "pipeline.store.verify.x__lease_is_live__mutmut_12": "heartbeat default 1 s instead of 0: either puts a lease "
    "without heartbeat in 1970, expired under any ttl shorter than 56 years",
    "pipeline.store.verify.x__lease_is_live__mutmut_13": "age <= ttl to <: they differ only when the float clock "
    "lands exactly on the expiry instant",
    # pipeline/store/lease.py
    "pipeline.store.lease.xǁLeaseǁacquire__mutmut_21": "heartbeat default 1 for 0: a lease without one is "
    "56 years old either way, past any ttl",
    "pipeline.store.lease.xǁLeaseǁholder__mutmut_4": "holder '' for None after a read error: both are not a "
    "dict, so both read as the unreadable lease",
    "pipeline.store.lease.xǁLeaseǁholder__mutmut_17": "isfinite default 1 for 0: only used for a missing "
    "field, and both are finite",
    # pipeline/decode/keyframes.py
    "pipeline.decode.keyframes.x__extract_with__mutmut_1": "default damage policy: extract_keyframes always "
    "passes one",
    "pipeline.decode.keyframes.x__extract_with__mutmut_2": "as x__extract_with__mutmut_1",
    "pipeline.decode.keyframes.x__extract_with__mutmut_43": "argsort not stable: tied indices are the same frame, "
    "whose JPEG bytes are equal, so their order cannot show",
    "pipeline.decode.keyframes.x__extract_with__mutmut_45": "as x__extract_with__mutmut_43 (kind dropped)",
    "pipeline.decode.keyframes.x__extract_with__mutmut_47": "argsort kind 'STABLE': as x__extract_with__mutmut_43",
    "pipeline.decode.keyframes.xǁ_CleanReaderǁ_tell_apart__mutmut_27": "message None: _read_clean appends its "
    "message first, and only damage[0] is ever shown",
    "pipeline.decode.keyframes.xǁ_CleanReaderǁ_tell_apart__mutmut_82":
        "as xǁ_CleanReaderǁ_tell_apart__mutmut_27 (the GOP bisection's message)",
    "pipeline.decode.keyframes.xǁ_CleanReaderǁ_tell_apart__mutmut_32":
        "`failed` None in the halving path, which never reads it (sources without GOPs)",
    "pipeline.decode.keyframes.xǁ_CleanReaderǁ_tell_apart__mutmut_37":
        "as xǁ_CleanReaderǁ_tell_apart__mutmut_32 (False)",
    "pipeline.decode.keyframes.xǁ_CleanReaderǁ__init____mutmut_4":
        "_first_damage '' for None: both are false where it is read (`or error.message`), and it is set "
        "before any frame is known damaged",
    "pipeline.decode.keyframes.xǁ_CleanReaderǁ_nearest_clean__mutmut_13": "batches starting at every candidate: "
    "candidates are in (distance, index) order, so the first clean one found is the same",
    "pipeline.decode.keyframes.x__to_upright_jpeg__mutmut_12": "rotation / 90: np.rot90 takes a float k modulo 4 "
    "and turns the same",
    "pipeline.decode.keyframes.x_to_jpeg__mutmut_9": "format 'jpeg': PIL reads format names case-insensitively",
    # pipeline/tags/parse.py
    "pipeline.tags.parse.x__json_strings__mutmut_7": "rstrip('XX,XX') strips ',' and 'X'; the text is lowercased, "
    "so a line never ends in 'X'",
    "pipeline.tags.parse.x__item_candidates__mutmut_17": "split(':') without maxsplit: only [0] is used, "
    "which is the text before the first colon whatever the maxsplit",
    "pipeline.tags.parse.x__item_candidates__mutmut_20": "as x__item_candidates__mutmut_17 (maxsplit 2)",
    "pipeline.tags.parse.x__item_candidates__mutmut_26": "_EXPLANATION_DASH.split without maxsplit: only [0] "
    "is used, the text before the first dash whatever the maxsplit",
    "pipeline.tags.parse.x__item_candidates__mutmut_28": "as x__item_candidates__mutmut_26 (maxsplit 2)",
    "pipeline.tags.parse.x__item_candidates__mutmut_34": "_SENTENCE_END.split without maxsplit: only [0] "
    "is used, the first sentence whatever the maxsplit",
    "pipeline.tags.parse.x__item_candidates__mutmut_36": "as x__item_candidates__mutmut_34 (maxsplit 2)",
    "pipeline.tags.parse.x__list_candidates__mutmut_26": "rstrip('XX.XX') strips '.' and 'X'; the text is "
    "lowercased, so it never ends in 'X'",
    "pipeline.tags.parse.x__list_candidates__mutmut_29": "max default None: the default is only used when there "
    "are no pieces, and then len(pieces) > 1 and == 1 are both false before longest is compared",
    "pipeline.tags.parse.x__list_candidates__mutmut_32": "as x__list_candidates__mutmut_29 (default 1)",
    "pipeline.tags.parse.x__clean__mutmut_10": "'*' left in place: it is not a word character, so _WORD, "
    "_POSSESSIVE's lookbehind and \\b treat it as they treat the space it becomes",
    "pipeline.tags.parse.x__clean__mutmut_12": "'_' left in place: _WORD splits at it either way; it only decides "
    "whether a possessive touching it leaves the stopword 's', never kept and read by the tagger as PRP before "
    "the same next tag (checked: no tag changes)",
    "pipeline.tags.parse.x__is_clause__mutmut_12": "the length check's branch is unreachable: tokenize=False "
    "splits on single spaces and _WORD words hold no whitespace, so the tagger returns one tag per word",
    "pipeline.tags.parse.x__pos_tag__mutmut_2": "tokenize=None is falsy, the same as False",
    "pipeline.tags.parse.x__pos_tag__mutmut_4": "tokenize=True (the default): the tokenizer only splits "
    "punctuation, quotes and contractions, which _WORD words (letters, digits, inner hyphens) never hold",
    "pipeline.tags.parse.x__pos_tag__mutmut_5": "as x__pos_tag__mutmut_4 (tokenize=True)",
}


def run_group(name: str, group: Group, children: int, show_survivors: bool) -> dict:
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as work:
        for part in ("pipeline", "tests", "prompts", "jobs"):
            shutil.copytree(ROOT / part, Path(work) / part, ignore=shutil.ignore_patterns("__pycache__"))
        config = (ROOT / "pyproject.toml").read_text()
        config += (
            "\n[tool.mutmut]\n"
            'source_paths = ["pipeline"]\n'
            f"only_mutate = [{json.dumps(group.module)}]\n"
            f"pytest_add_cli_args_test_selection = {json.dumps(list(group.tests))}\n"
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
            'also_copy = ["prompts", "jobs"]\n'
        )
        (Path(work) / "pyproject.toml").write_text(config)
        started = time.perf_counter()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run([mutmut, "run", "--max-children", str(children)], cwd=work, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise SystemExit(f"mutmut failed on group {name}:\n{tail}")
        subprocess.run([mutmut, "export-cicd-stats"], cwd=work, env=env, capture_output=True, check=True)
        stats = json.loads((Path(work) / "mutants" / "mutmut-cicd-stats.json").read_text())
        results = subprocess.run([mutmut, "results"], cwd=work, env=env, capture_output=True, text=True).stdout
        survivors = [m for m, status in re.findall(r"^\s*(\S+): (\w[\w ]*)$", results, re.M)
                     if status in ("survived", "no tests")]
        if show_survivors:
            for mutant in survivors:
                diff = subprocess.run([mutmut, "show", mutant], cwd=work, env=env, capture_output=True, text=True)
                print(diff.stdout)
    module = group.module.removesuffix(".py").replace("/", ".") + "."
    stale = [m for m in EQUIVALENT if m.startswith(module) and m not in survivors]
    for mutant in stale:  # the code or the tests moved: the name now means another mutant, or none
        print(f"stale EQUIVALENT entry (killed, or renamed): {mutant}", file=sys.stderr)
    equivalent = [m for m in survivors if m in EQUIVALENT]
    live = [m for m in survivors if m not in EQUIVALENT]
    total = stats["total"] - len(equivalent)
    killed = stats["killed"] + stats["timeout"]  # a mutant that hangs the tests is caught too
    return {"group": name, "module": group.module, "mutants": stats["total"], "killed": killed,
            "equivalent": len(equivalent), "survived": live, "score": killed / total if total else 1.0,
            "seconds": round(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", action="append", choices=sorted(GROUPS), help="only these groups")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 1, help="mutants tested at once")
    parser.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--fail-under", type=float, default=0.0, metavar="SCORE",
                        help="exit 1 when a group kills fewer than this share of its non-equivalent mutants")
    args = parser.parse_args()
    rows = [run_group(name, GROUPS[name], args.children, args.survivors) for name in args.group or GROUPS]
    print("| module | mutants | killed | equivalent | survived | score | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| `{row['module']}` | {row['mutants']} | {row['killed']} | {row['equivalent']} | "
              f"{len(row['survived'])} | {row['score']:.0%} | {row['seconds']} |")
    for row in rows:
        for mutant in row["survived"]:
            print(f"survived: {mutant}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    low = [row["group"] for row in rows if row["score"] < args.fail_under]
    if low:
        print(f"below {args.fail_under:.0%}: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
