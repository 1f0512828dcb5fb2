"""The stages, in the order they run. Each module holds one stage and its config."""

from pipeline.stages import keyframes, probe

# Topological order: a stage comes after every stage it reads.
STAGES = {
    "probe": probe.STAGE,
    "keyframes": keyframes.STAGE,
}
