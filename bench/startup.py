"""What a model stage pays before its first item: a fresh process importing torch and transformers'
model classes, and Ray starting that process for the stage's actor.

    python bench/startup.py --rounds 3

Prints, as Markdown, the median over `--rounds` of:
- `import torch`, then `from transformers import CLIPModel, LlamaForCausalLM`, each timed in a
  fresh Python process;
- the seconds until a new Ray actor that imports both is ready, and the import time inside it,
  with and without a `worker_process_setup_hook` that imports them in every worker beforehand
  (it helps only if Ray hands an idle, already set-up worker to the actor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

IMPORTS = "import torch", "from transformers import CLIPModel, LlamaForCausalLM"


def fresh_process_imports() -> list[float]:
    """Seconds for each of IMPORTS, in order, in one new Python process."""
    code = ("import json, time\nseconds = []\n"
            + "".join(f"t = time.perf_counter()\n{line}\nseconds.append(time.perf_counter() - t)\n"
                      for line in IMPORTS)
            + "print(json.dumps(seconds))")
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout)


def preload() -> None:
    import torch  # noqa: F401
    from transformers import CLIPModel, LlamaForCausalLM  # noqa: F401


def actor_start(hook: bool, rounds: int, settle: float) -> tuple[float, float]:
    """Medians of (seconds until a new actor is ready, seconds its own imports took)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"worker_process_setup_hook": preload} if hook else None)

    @ray.remote
    def warm(x):
        return x

    @ray.remote
    class Model:
        def __init__(self):
            started = time.perf_counter()
            preload()
            self.seconds = time.perf_counter() - started

        def imports(self) -> float:
            return self.seconds

    ray.get([warm.remote(i) for i in range(4)])  # the worker pool up, as in a running pipeline
    time.sleep(settle)
    ready, inside = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        actor = Model.remote()
        inside.append(ray.get(actor.imports.remote()))
        ready.append(time.perf_counter() - started)
        ray.kill(actor)
        time.sleep(settle / 2)
    ray.shutdown()
    return statistics.median(ready), statistics.median(inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds the idle worker pool gets before actors")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    imports = [fresh_process_imports() for _ in range(args.rounds)]
    print("| fresh process | seconds |\n|---|---|")
    for k, line in enumerate(IMPORTS):
        print(f"| `{line}` | {statistics.median(r[k] for r in imports):.2f} |")
    print("\n| new Ray actor importing both | ready after (s) | imports inside it (s) |\n|---|---|---|")
    for hook in (False, True):
        ready, inside = actor_start(hook, args.rounds, args.settle)
        label = "with a setup hook importing both in every worker" if hook else "plain"
        print(f"| {label} | {ready:.2f} | {inside:.2f} |")


if __name__ == "__main__":
    main()
