"""Generation throughput per backend on the same requests: requests/s and output tokens/s.

    python bench/generate.py --requests 64 --max-tokens 48 --rounds 2

The textual-tags requests of `--requests` generated captions (the paper's raw prompt, temperature
0.7, per-request seeds, `--max-tokens` new tokens at most), answered by a Llama-shaped causal LM
with random weights built from its config (`--hidden`, `--layers`; speed does not depend on weight
values) and the tiny byte-level tokenizer, through:
- `transformers` in-process (`TransformersEngine`: static batched `generate`, requests grouped by
  prompt length), at each `--batch` size;
- `openai`: the same model behind a real local `transformers serve`, through `OpenAIEngine` with
  `--concurrency` requests in flight;
- `generate_batch`: transformers' continuous batching on the same prompts, called directly,
  greedy (it takes no per-request seeds, which the engine's reproducible sampling needs).
Random weights rarely emit end-of-sequence, but sometimes do: output tokens are counted as
generated. Medians of the rounds, as Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the `transformers serve` launcher the tests use

from pipeline.engines.base import GenerationRequest  # noqa: E402
from pipeline.engines.config import OpenAIEngineConfig, TransformersEngineConfig  # noqa: E402
from pipeline.engines.prompts import load_prompt  # noqa: E402
from pipeline.tags.asking import request_seed  # noqa: E402

SUBJECTS = ["a man", "two children", "a woman", "a dog", "a band", "a chef", "a crowd", "a cyclist"]
ACTIONS = ["plays guitar on a stage", "cooks pasta in a small kitchen", "rides down a muddy hill",
           "dances at a wedding", "explains how to fix a bike", "runs across a beach at sunset"]


def build_model(folder: Path, hidden: int, layers: int) -> str:
    """The tiny LM's tokenizer and chat template with a bigger Llama body, random weights."""
    if (folder / "config.json").exists():
        return str(folder)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.models.tiny_lm import build_tiny_lm

    tiny = build_tiny_lm(folder.parent / "tokenizer-source")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig.from_pretrained(tiny)
    config.hidden_size, config.num_hidden_layers = hidden, layers
    config.intermediate_size, config.num_attention_heads, config.num_key_value_heads = hidden * 8 // 3, 8, 8
    config.head_dim = hidden // 8
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    from transformers import GenerationConfig

    GenerationConfig.from_pretrained(tiny).save_pretrained(folder)
    return str(folder)


def requests(n: int, max_tokens: int) -> list[GenerationRequest]:
    prompt = load_prompt("macvr_textual_tags")
    out = []
    for i in range(n):
        caption = f"{SUBJECTS[i % len(SUBJECTS)]} {ACTIONS[i % len(ACTIONS)]}"
        rid = f"c{i}@t0.7"
        out.append(GenerationRequest(id=rid, prompt=prompt.render(caption=caption), temperature=0.7,
                                     max_tokens=max_tokens, seed=request_seed(0, rid)))
    return out


def timed(engine, batch: list[GenerationRequest]) -> tuple[float, int]:
    started = time.perf_counter()
    results = engine.generate(batch)
    seconds = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return seconds, sum(r.output_tokens for r in results)


class ContinuousBatching:
    """transformers' `generate_batch` over the requests' prompts, greedy: for comparison only."""

    def __init__(self, model: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.network = AutoModelForCausalLM.from_pretrained(model).eval()

    def generate(self, batch: list[GenerationRequest]):
        from transformers import GenerationConfig

        from pipeline.engines.base import GenerationResult

        config = GenerationConfig(max_new_tokens=batch[0].max_tokens, do_sample=False,
                                  eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        ids = [self.tokenizer(r.prompt)["input_ids"] for r in batch]
        outputs = self.network.generate_batch(ids, generation_config=config, warmup=False)
        return [GenerationResult(r.id, "", "stop", output_tokens=len(o.generated_tokens))
                for r, o in zip(batch, outputs.values())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", default="bench/_data/generate")
    args = parser.parse_args()

    import torch

    from pipeline.engines import load_engine
    from pipeline.engines.openai_engine import OpenAIEngine

    torch.set_num_threads(args.threads)
    model = build_model(Path(args.data) / f"llama-{args.hidden}x{args.layers}", args.hidden, args.layers)
    work = requests(args.requests, args.max_tokens)
    measured: dict[str, list[tuple[float, int]]] = {}
    engines = {f"transformers, batch {b}": load_engine(TransformersEngineConfig(model=model, batch_size=b),
                                                       device="cpu", dtype="float32") for b in args.batch}
    from test_openai_engine import transformers_serve

    with tempfile.TemporaryDirectory() as logs, transformers_serve(model, Path(logs) / "serve.log") as url:
        engines[f"openai (transformers serve), {args.concurrency} in flight"] = OpenAIEngine(
            OpenAIEngineConfig(model=model, base_url=url, max_concurrency=args.concurrency, timeout_seconds=600))
        engines["transformers generate_batch (continuous batching, greedy)"] = ContinuousBatching(model)
        for name, engine in engines.items():
            engine.generate(work[:2])  # warm-up
        for _ in range(args.rounds):
            for name, engine in engines.items():
                measured.setdefault(name, []).append(timed(engine, work))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, {args.threads} threads")
    print(f"{args.requests} textual-tags requests (raw prompt, temperature 0.7, at most {args.max_tokens} new "
          f"tokens), Llama-shaped {args.hidden} x {args.layers} layers, random weights, float32 on CPU; "
          f"median of {args.rounds} rounds\n")
    print("| backend | requests/s | output tokens/s | mean output tokens |")
    print("|---|---|---|---|")
    for name, runs in measured.items():
        seconds = statistics.median(s for s, _ in runs)
        tokens = statistics.median(t for _, t in runs)
        print(f"| {name} | {args.requests / seconds:.2f} | {tokens / seconds:.1f} | {tokens / args.requests:.1f} |")


if __name__ == "__main__":
    main()
