"""Plugin classes for test_plugin_engine: one that keeps the engine contract, and ones that do not.
Loaded by name (`echo_plugin:EchoEngine`), as a user's own package would be."""

from __future__ import annotations

from pipeline.engines.base import GenerationRequest, GenerationResult

NOT_A_CLASS = "just a string"


class EchoEngine:
    """Answers each request with what it was asked, the frame count and the seed."""

    name = "echo"
    built = 0  # how many were constructed: a rejected config must construct none

    def __init__(self, model: str, revision: str | None = None, prefix: str = "echo"):
        EchoEngine.built += 1
        self.model, self.revision, self.prefix = model, revision, prefix
        self.closed = False

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = []
        for r in requests:
            asked = r.prompt if r.prompt is not None else r.messages[-1]["content"]
            text = f"{self.prefix}: {asked} ({len(r.frames)} frames, seed {r.seed})"
            results.append(GenerationResult(r.id, text, "stop", prompt_tokens=len(asked), output_tokens=len(text)))
        return results

    def close(self) -> None:
        self.closed = True


class NoGenerate:
    """Builds, but cannot answer."""

    def __init__(self, model: str, revision: str | None = None):
        self.model = model

    def close(self) -> None:
        pass
