"""Training and evaluation cost of the retrieval heads at MSR-VTT shapes.

    python bench/train.py --steps 10 --threads 2

Two measurements, printed as Markdown for BENCHMARKS.md:
- training steps/s per head at batch 128, 12 frames, width 512 (the paper configs' heads): one
  step is what `run_training` does per batch (loss forward and backward, AdamW step) on random
  CLIP-sized embeddings, with and without the frozen CLIP ViT-B/32 text tower's forward for the
  batch's captions (and for MAC-VR its two tag sentences per caption), built from its config
  with random weights (speed does not depend on weight values), 20 tokens a caption;
- QB-Norm of a 1k-A-sized test set (1,000 x 1,000) over a querybank of `--bank` training
  captions (MSR-VTT's 9k x 20 = 180,000): the float32 bank held once (720 MB), `qb_norm` read
  over it in blocks; its wall time and the peak of memory allocated during the call (tracemalloc,
  which sees NumPy's buffers), beside the bank's own size. Also each head's 1,000 x 1,000 test
  similarity matrix, the way `evaluate` computes it (blocks of 256 x 256; T-MASS with 20 draws).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import torch

from pipeline.train.config import ModelConfig
from pipeline.train.heads import Lsdo, Texts, Videos, build_head
from pipeline.train.inference import qb_norm
from pipeline.train.loop import similarity_matrix

HEADS = {  # the paper configs' settings (jobs/configs/train/msrvtt_*.yaml)
    "meanpool": ModelConfig(head="meanpool"),
    "xpool": ModelConfig(head="xpool"),
    "macvr": ModelConfig(head="macvr", tau_a=3.0, concepts=8),
    "tmass": ModelConfig(head="tmass"),
    "lsdo": ModelConfig(head="lsdo", lsdo_features="shared"),
}
DIM, FRAMES, BATCH, TOKENS, TEST = 512, 12, 128, 20, 1000


def inputs(n: int, words: bool, tags: bool, generator: torch.Generator) -> tuple[Texts, Videos]:
    texts = Texts(torch.randn(n, DIM, generator=generator) * 8)
    if words:
        texts.words = torch.randn(n, TOKENS, DIM, generator=generator)
        texts.word_mask = torch.ones(n, TOKENS, dtype=torch.bool)
    if tags:
        texts.tags = torch.randn(n, DIM, generator=generator) * 8
    videos = Videos(torch.randn(n, FRAMES, DIM, generator=generator) * 10,
                    torch.randn(n, DIM, generator=generator) * 8 if tags else None)
    return texts, videos


def text_tower():
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=512)).eval()  # ViT-B/32's text tower


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_training(steps: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    tower = text_tower()
    ids = torch.randint(0, 49000, (BATCH, TOKENS), generator=generator)
    mask = torch.ones_like(ids)

    def encode(copies: int):
        with torch.no_grad():
            for _ in range(copies):
                tower(input_ids=ids, attention_mask=mask)

    rows = ["| head | parameters | head step (s) | head steps/s | + frozen text tower (s) | full steps/s |",
            "|---|---|---|---|---|---|"]
    tower_once = timed(lambda: encode(1), steps)
    for name, config in HEADS.items():
        head = build_head(config, DIM, FRAMES, tags=name == "macvr")
        if isinstance(head, Lsdo) and head.features == "shared":
            head.set_reference(torch.randn(config.shared_videos, FRAMES, DIM))
        head.train()
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-5)
        texts, videos = inputs(BATCH, head.reads_words, head.reads_tags, generator)

        def step():
            loss = head.loss(texts, videos)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = timed(step, steps)
        tower_seconds = tower_once * (3 if head.reads_tags else 1)  # caption, and MAC-VR's two tag sentences
        params = sum(p.numel() for p in head.parameters())
        rows.append(f"| {name} | {params / 1e6:.2f} M | {seconds:.3f} | {1 / seconds:.2f} | {tower_seconds:.3f} | "
                    f"{1 / (seconds + tower_seconds):.2f} |")
    return rows


def _trainer_path(bank_size: int, test: int, dim: int) -> tuple[float, float, float]:
    """In a fresh process: what `evaluate` does for QB-Norm's text-to-video querybank with the
    meanpool head (the querybank's similarities in blocks into one preallocated matrix, then
    `qb_norm`); (seconds, MB of inputs, peak MB of resident memory above the inputs)."""
    def peak_mb() -> float:  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1e3

    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(0)
    bank_texts = Texts(torch.randn(bank_size, dim, generator=generator))
    test_texts = Texts(torch.randn(test, dim, generator=generator))
    videos = Videos(torch.randn(test, FRAMES, dim, generator=generator))
    inputs_mb = (bank_texts.embeds.nbytes + test_texts.embeds.nbytes + videos.frames.nbytes) / 1e6
    before = peak_mb()
    head = build_head(HEADS["meanpool"], dim, FRAMES)
    start = time.perf_counter()
    sim = similarity_matrix(head, test_texts, videos, 256)
    qb_norm(sim, similarity_matrix(head, bank_texts, videos, 256), k=1, beta=20.0, theta=1)
    seconds = time.perf_counter() - start
    return seconds, inputs_mb, peak_mb() - before


def bench_evaluation(bank_size: int) -> list[str]:
    rng = np.random.default_rng(0)
    sim = rng.uniform(-0.2, 0.6, size=(TEST, TEST)).astype(np.float32)
    bank = rng.uniform(-0.2, 0.6, size=(bank_size, TEST)).astype(np.float32)
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    qb_norm(sim, bank, k=1, beta=20.0, theta=1)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del bank
    child = subprocess.run([sys.executable, __file__, "--trainer-path", "--bank", str(bank_size), "--test", str(TEST),
                            "--dim", str(DIM)], capture_output=True, text=True, check=True)
    path_seconds, inputs_mb, above_mb = json.loads(child.stdout.splitlines()[-1])
    rows = [f"QB-Norm, {TEST:,} x {TEST:,} test matrix, querybank {bank_size:,} x {TEST:,} float32 "
            f"({bank_size * TEST * 4 / 1e6:.0f} MB, held once): {seconds:.2f} s, peak allocated during the call "
            f"{peak / 1e6:.0f} MB.", "",
            f"The trainer's path (meanpool head, in a fresh process): the querybank's similarities from "
            f"{bank_size:,} caption embeddings against {TEST:,} videos, then QB-Norm: {path_seconds:.1f} s, peak "
            f"resident memory {above_mb:.0f} MB above the {inputs_mb:.0f} MB of inputs.", "",
            f"| head | {TEST:,} x {TEST:,} test similarities (s) |", "|---|---|"]
    generator = torch.Generator().manual_seed(1)
    for name, config in HEADS.items():
        head = build_head(config, DIM, FRAMES, tags=name == "macvr").eval()
        if isinstance(head, Lsdo) and head.features == "shared":
            head.set_reference(torch.randn(config.shared_videos, FRAMES, DIM))
        texts, videos = inputs(TEST, head.reads_words, head.reads_tags, generator)
        with torch.no_grad():
            start = time.perf_counter()
            similarity_matrix(head, texts, videos, 256)
        rows.append(f"| {name} | {time.perf_counter() - start:.1f} |")
    return rows


def main() -> None:
    global BATCH, DIM, TEST
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per head (the median is reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bank", type=int, default=180_000, help="querybank rows (MSR-VTT: 9k videos x 20)")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--batch", type=int, default=BATCH, help="training batch (MSR-VTT configs: 128 and 32)")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding width (ViT-B/32: 512)")
    parser.add_argument("--test", type=int, default=TEST, help="test captions and videos (1k-A: 1,000)")
    parser.add_argument("--trainer-path", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.trainer_path:
        print(json.dumps(_trainer_path(args.bank, args.test, args.dim)))
        return
    BATCH, DIM, TEST = args.batch, args.dim, args.test
    torch.set_num_threads(args.threads)
    device = f"{platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}"
    print(f"Machine: {device}\n")
    print("\n".join(bench_training(args.steps)))
    if not args.skip_eval:
        print()
        print("\n".join(bench_evaluation(args.bank)))


if __name__ == "__main__":
    main()
