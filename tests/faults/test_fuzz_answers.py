"""Fuzzing what comes from outside the program: an OpenAI-compatible server's answers (random and
type-confused JSON) and a training output's files (random, truncated or type-confused
checkpoint.pt, garbage config.yaml). No case may end in a traceback: an answer becomes a row that
fits the tags schema or a `generation_error` failure; `tvr eval` and `tvr train` (resuming) print
one line and exit 1 for a damaged file (2 only where a config that parses says another run).
Seeded (`derandomize`): the same cases on every run."""

from __future__ import annotations

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import cli
from pipeline import config as config_lib
from pipeline.engines.base import GenerationRequest
from pipeline.engines.openai_engine import parse_response
from pipeline.run.stage import Failure
from pipeline.store.schema import TAGS
from pipeline.tags.asking import result_row
from pipeline.train.config import TrainConfig

FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

# ---- an OpenAI-compatible server's answer -------------------------------------------------------

# What `json.loads` can give: any JSON, with the text that breaks naive code (lone surrogates
# from "\ud800" escapes, huge and negative numbers, floats that are whole).
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=12) | st.just("\ud800"))
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
# An answer's shape with any value in any place, each key present or not.
maybe = lambda value: st.one_of(st.just(None), value)  # noqa: E731
answers = st.fixed_dictionaries({}, optional={
    "choices": st.one_of(any_json, st.lists(st.fixed_dictionaries({}, optional={
        "message": st.one_of(any_json, st.fixed_dictionaries({}, optional={"content": any_json, "role": any_json})),
        "text": any_json,
        "finish_reason": st.one_of(any_json, st.sampled_from(["stop", "length", "tool_calls"])),
    }), max_size=2)),
    "usage": st.one_of(any_json, st.fixed_dictionaries({}, optional={
        "prompt_tokens": any_json, "completion_tokens": any_json})),
})

ITEM = {"request_id": "v1@t0.7", "item_id": "v1", "video_id": "v1", "temperature": 0.7}
REQUESTS = [GenerationRequest("v1@t0.7", messages=[{"role": "user", "content": "tags?"}]),
            GenerationRequest("v1@t0.7", prompt="tags?")]


def _answered(data, request: GenerationRequest) -> dict | Failure:
    """What a tag stage makes of one answer, checked: a failure, or a row the tags schema takes."""
    result = parse_response(request, data)
    row = result_row(ITEM, result, model="m", revision=None, prompt_name="p", prompt_sha256="0" * 64, seed=1)
    if isinstance(row, Failure):
        assert row.reason == "generation_error" and row.message and "\n" not in row.message
    else:
        assert result.error is None and result.finish_reason in ("stop", "length")
        pq.write_table(pa.Table.from_pylist([row], schema=TAGS), io.BytesIO())  # what the worker then writes
    return row


@FUZZ
@given(st.one_of(any_json, answers))
def test_any_answer_is_a_row_or_a_generation_error(data):
    for request in REQUESTS:  # a chat answer, and a raw prompt's
        _answered(json.loads(json.dumps(data)), request)  # as it arrives: through JSON


@pytest.mark.parametrize(("body", "says"), [
    ({"choices": [{"message": {"content": "a, b"}}], "usage": [1, 2]}, "usage is a list, not an object"),
    ({"choices": [{"message": {"content": "a, b"}}], "usage": {"prompt_tokens": {"n": 1}}},
     "usage.prompt_tokens is an object, not a token count"),
    ({"choices": [{"message": {"content": "a, b"}}], "usage": {"completion_tokens": "7"}},
     "usage.completion_tokens is a string, not a token count"),
    ({"choices": [{"message": {"content": [{"type": "text", "text": "a"}]}}]},
     "choices[0].message.content is a list, not a string"),
    ({"choices": [{"message": ["a"]}]}, "choices[0].message is a list, not an object"),
    ({"choices": [{"message": {"content": "\ud800"}}]}, "not valid Unicode"),
    ({"choices": {"0": {}}}, "no choices"),
    ([1, 2], "no choices"),
])
def test_a_wrongly_typed_answer_names_what_was_wrong(body, says):
    failure = _answered(body, REQUESTS[0])
    assert isinstance(failure, Failure) and says in failure.message


def test_whole_float_counts_are_counts():
    result = parse_response(REQUESTS[0], {"choices": [{"message": {"content": "a"}}],
                                          "usage": {"prompt_tokens": 3.0, "completion_tokens": 2}})
    assert (result.error, result.prompt_tokens, result.output_tokens) == (None, 3, 2)


# ---- a training output's checkpoint.pt and config.yaml ---------------------------------------------


def _state() -> dict:
    """A checkpoint with every key `run_training` saves, of the types it saves."""
    head = {"proj.weight": torch.zeros(4, 4), "proj.bias": torch.zeros(4)}
    return {"head": head, "epoch": 1, "step": 3, "versions": {"frame_features": "abc"},
            "metrics": {"epoch": 1, "loss": 0.5, "t2v": {}, "v2t": {}}, "text_encoder": None,
            "optimizer": {"state": {}, "param_groups": []}, "rng": torch.get_rng_state(), "cuda_rng": None}


@pytest.fixture(scope="module")
def saved_bytes() -> bytes:
    return _saved(_state())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training output folder and the config file that trains into it: the same config, so
    `tvr train` resumes from whatever checkpoint.pt holds; its data folder does not exist, so a
    checkpoint that got past the checks would fail loudly (exit 2, InputNotReady) instead."""
    root = tmp_path_factory.mktemp("fuzz-train")
    cfg = config_lib.build(TrainConfig, {"data": {"out": str(root / "no-data")}, "output_dir": str(root / "run"),
                                         "device": "cpu", "progress": False})
    (root / "run").mkdir()
    text = yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False)
    (root / "train.yaml").write_text(text)
    return root, text


def _one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"tvr {command}: error: "), captured.err
    return captured.err


def _both_commands(run_dir, capsys, checkpoint: bytes, config_text: str | None = None,
                   eval_reads_it: bool = True) -> list[str]:
    """`tvr eval` and `tvr train` over the damaged output; `eval_reads_it`: False when only resuming
    reads what is damaged (the optimiser's state, say), and eval goes on to the (missing) data."""
    root, text = run_dir
    (root / "run" / "checkpoint.pt").write_bytes(checkpoint)
    (root / "run" / "config.yaml").write_text(text if config_text is None else config_text)
    errors = []
    for command, args in (("eval", [str(root / "run")]), ("train", [str(root / "train.yaml")])):
        code = cli.main([command, *args])
        errors.append(_one_line_error(capsys, command))
        if command == "eval" and not eval_reads_it:
            assert code == 2 and "no frame_features" in errors[-1], errors[-1]
        else:
            assert code == 1 and "checkpoint.pt" in errors[-1], errors[-1]
    return errors


_RESUME_ONLY = {"step", "metrics", "optimizer", "rng", "cuda_rng"}


def _mutations(rng: random.Random, saved: bytes) -> list[tuple[bytes, bool]]:
    """Random bytes, the real file cut anywhere, and states with a key gone or of another type;
    each with whether `tvr eval` reads what is damaged."""
    out = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))) for _ in range(6)]
    out += [saved[: rng.randrange(0, len(saved))] for _ in range(8)]
    out.append(saved[:4] + bytes(rng.getrandbits(8) for _ in range(len(saved) - 4)))  # a zip header, then noise
    for other in ([_state()], torch.zeros(3), "a string", {"metrics": {}}):
        out.append(_saved(other))
    out = [(data, True) for data in out]
    wrong_values = [None, 1, -1, True, "x", [1], {"a": 1}, torch.zeros(2), 1.5]
    for key in _state():
        state = _state()
        del state[key]
        out.append((_saved(state), key not in _RESUME_ONLY))
        state = _state()
        state[key] = rng.choice([v for v in wrong_values if type(v) is not type(state[key])
                                 and not (key in ("text_encoder", "cuda_rng") and v is None)])
        out.append((_saved(state), key not in _RESUME_ONLY))
    return out


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_damaged_checkpoints_are_one_line_errors_exit_1(run_dir, saved_bytes, capsys):
    rng = random.Random(22)
    for checkpoint, eval_reads_it in _mutations(rng, saved_bytes):
        _both_commands(run_dir, capsys, checkpoint, eval_reads_it=eval_reads_it)


@settings(FUZZ, max_examples=40)
@given(st.one_of(st.binary(max_size=200).map(lambda b: b.decode("latin-1")), st.text(max_size=200),
                 any_json.map(yaml.safe_dump)))
def test_a_garbage_config_yaml_is_a_one_line_error(run_dir, saved_bytes, capsys, garbage):
    root, _ = run_dir
    (root / "run" / "checkpoint.pt").write_bytes(saved_bytes)
    (root / "run" / "config.yaml").write_text(garbage)
    assert cli.main(["eval", str(root / "run")]) == 1  # saved by the run: damaged, whatever it says
    assert "config.yaml" in _one_line_error(capsys, "eval")
    # To resume, a config that reads as a mapping but differs is another run (exit 2), else damaged.
    code = cli.main(["train", str(root / "train.yaml")])
    error = _one_line_error(capsys, "train")
    assert (code, "holds another run" in error) in ((1, False), (2, True)), error


def test_a_truncated_or_missing_config_yaml(run_dir, saved_bytes, capsys):
    root, text = run_dir
    (root / "run" / "checkpoint.pt").write_bytes(saved_bytes[:100])  # both files damaged: either is named
    for cut in (1, len(text) // 3, len(text) - 5):
        (root / "run" / "config.yaml").write_text(text[:cut])
        for command, args in (("eval", [str(root / "run")]), ("train", [str(root / "train.yaml")])):
            code, error = cli.main([command, *args]), _one_line_error(capsys, command)
            assert (code == 1 and ("config.yaml" in error or "checkpoint.pt" in error)
                    or code == 2 and "holds another run" in error and command == "train"), error
    (root / "run" / "config.yaml").unlink()
    (root / "run" / "checkpoint.pt").write_bytes(saved_bytes)
    assert cli.main(["eval", str(root / "run")]) == 1
    assert "config.yaml is missing" in _one_line_error(capsys, "eval")
