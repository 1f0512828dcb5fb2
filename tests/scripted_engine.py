"""A plugin engine for tag-stage tests: answers each request from its id by rule, so a test knows
exactly what every request returns (and can make one request fail, raise or cut short). It goes
through the real plugin loader (`backend: plugin`, `plugin: scripted_engine:ScriptedEngine`)."""

from __future__ import annotations

import os

from pipeline.engines.base import GenerationRequest, GenerationResult

# request id -> bullet list answered for it; anything else gets DEFAULT_ANSWER
DEFAULT_ANSWER = "Here are the top 10 general tags:\n- **Music**: sound\n- performance\n- entertainment"


class ScriptedEngine:
    name = "scripted"

    def __init__(self, model: str, revision: str | None = None, fail: str = "", raise_on: str = "",
                 cut: str = "", by_temperature: dict | None = None, loads_file: str = ""):
        self.model, self.revision = model, revision
        self.fail, self.raise_on, self.cut = fail, raise_on, cut
        self.by_temperature = {float(k): v for k, v in (by_temperature or {}).items()}
        if loads_file:
            with open(loads_file, "a") as f:
                f.write(f"{os.getpid()}\n")

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if any(self.raise_on and r.id.startswith(self.raise_on) for r in requests):
            raise RuntimeError(f"engine exploded on {self.raise_on}")
        results = []
        for request in requests:
            if self.fail and request.id.startswith(self.fail):
                results.append(GenerationResult(request.id, "", "error", error="server said 500 three times"))
                continue
            text = self.by_temperature.get(request.temperature, DEFAULT_ANSWER)
            reason = "stop"
            if self.cut and request.id.startswith(self.cut):
                text, reason = text + "\n- half a t", "length"
            results.append(GenerationResult(request.id, text, reason, prompt_tokens=len(request.frames) + 7,
                                            output_tokens=len(text.split())))
        return results

    def close(self) -> None:
        pass
