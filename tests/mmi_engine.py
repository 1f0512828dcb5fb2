"""A plugin engine for the MMI stage tests that reads what it is asked, so a test knows every answer:

- a request with frames (a VLM question about a video) answers with the colour of its first
  frame ("red", "green", "blue", ...): the test videos' key images are solid colours;
- a textual question answers by echoing the request's caption (the prompt's last "Text:" line);
- a skeleton-score request (its prompt holds "Textual Skeleton:") answers "Probability: 0.9" when
  the video skeleton's colour word is in the textual skeleton, else "I would say 0.1.";
- `fail`, `cut` and `raise_on` (request id prefixes) make a request fail, cut short or raise;
  `sleep` seconds per request slow it down for the kill tests; `loads_file` records each load.

It goes through the real plugin loader (`backend: plugin`, `plugin: mmi_engine:MmiEngine`)."""

from __future__ import annotations

import os
import re
import time

import numpy as np

from pipeline.engines.base import GenerationRequest, GenerationResult

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (240, 240, 240)}


def colour_of(frame: np.ndarray) -> str:
    mean = np.asarray(frame, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((mean - np.array(COLOURS[name])) ** 2)))


def _text_of(request: GenerationRequest) -> str:
    return request.messages[-1]["content"] if request.messages else request.prompt


class MmiEngine:
    name = "mmi-scripted"

    def __init__(self, model: str, revision: str | None = None, fail: str = "", cut: str = "", raise_on: str = "",
                 sleep: float = 0.0, loads_file: str = ""):
        self.model, self.revision = model, revision
        self.fail, self.cut, self.raise_on, self.sleep = fail, cut, raise_on, sleep
        if loads_file:
            with open(loads_file, "a") as f:
                f.write(f"{os.getpid()}\n")

    def answer(self, request: GenerationRequest) -> str:
        text = _text_of(request)
        if "Textual Skeleton:" in text:
            textual = text.split("Textual Skeleton:", 1)[1].split("Video Skeleton:", 1)[0]
            video = text.split("Video Skeleton:", 1)[1]
            colour = next((c for c in COLOURS if c in video), None)
            return "Probability: 0.9" if colour and colour in textual else "I would say 0.1."
        if request.frames:
            return colour_of(request.frames[0])
        captions = re.findall(r"^Text: (.*)$", text, flags=re.M)
        return captions[-1] if captions else "no text"

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if any(self.raise_on and r.id.startswith(self.raise_on) for r in requests):
            raise RuntimeError(f"engine exploded on {self.raise_on}")
        results = []
        for request in requests:
            time.sleep(self.sleep)
            if self.fail and request.id.startswith(self.fail):
                results.append(GenerationResult(request.id, "", "error", error="server said 500 three times"))
                continue
            answer, reason = self.answer(request), "stop"
            if self.cut and request.id.startswith(self.cut):
                answer, reason = answer + " and then", "length"
            results.append(GenerationResult(request.id, answer, reason, prompt_tokens=len(_text_of(request).split()),
                                            output_tokens=len(answer.split())))
        return results

    def close(self) -> None:
        pass
