"""The stages: every module here holding a `STAGE`, in an order where each stage comes after the
stages it reads (from their declared `inputs`; ties by name). Adding a stage is adding a module."""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.run.stage import Stage

# Outputs the manifest provides; every other input must be a stage.
MANIFEST_OUTPUTS = ("videos", "captions", "manifest")


def _discover() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        stage = getattr(importlib.import_module(f"{__name__}.{module}"), "STAGE", None)
        if isinstance(stage, Stage):
            if stage.name in found or stage.name in MANIFEST_OUTPUTS:
                raise RuntimeError(f"two stages are named {stage.name!r} (module {module})")
            found[stage.name] = stage
    return found


def in_dependency_order(stages: dict[str, Stage]) -> dict[str, Stage]:
    """Each stage after every stage it reads; a cycle or an input nothing provides is a bug."""
    ordered: dict[str, Stage] = {}
    waiting = dict(sorted(stages.items()))
    for stage in waiting.values():
        unknown = [name for name in stage.inputs if name not in stages and name not in MANIFEST_OUTPUTS]
        if unknown:
            raise RuntimeError(f"stage {stage.name} reads {unknown[0]!r}, which no stage writes")
    while waiting:
        ready = [name for name, stage in waiting.items()
                 if all(i in ordered or i in MANIFEST_OUTPUTS for i in stage.inputs)]
        if not ready:
            raise RuntimeError(f"stages read each other in a cycle: {', '.join(waiting)}")
        for name in ready:
            ordered[name] = waiting.pop(name)
    return ordered


STAGES: dict[str, Stage] = in_dependency_order(_discover())
