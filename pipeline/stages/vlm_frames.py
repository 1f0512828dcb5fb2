"""vlm_frames: the sparse frames a VLM is prompted with (MAC-VR: 8 frames), decoded like keyframes.

The same stage as `keyframes` (same decoding, integrity checks, schema and failures) with its own
config section, so a run keeps 12 uniform frames for CLIP features and 8 `vlm` frames (first to
last) for visual tags side by side, each versioned on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.decode.sampling import Sampling, Vlm
from pipeline.stages import keyframes


@dataclass
class VlmFramesConfig(keyframes.KeyframesConfig):
    sampling: Sampling = field(default_factory=lambda: Vlm(num_frames=8))


STAGE = dataclasses.replace(
    keyframes.STAGE,
    name="vlm_frames",
    description="the sparse frames a VLM is prompted with (8 vlm frames by default), as upright JPEG bytes",
    config_type=VlmFramesConfig,
)
