"""key_images: MMI-TVR's key-images (Sec. 4.1), the frames "selected based on notable disparities
in the video content from all frames", decoded like keyframes.

The same stage as `keyframes` (same decoding, integrity checks, schema and failures) with its own
config section, whose default sampling is `disparity`: 8 frames where the content changes most,
at least half a second apart (the measure is ours; the paper does not define it, docs/decoding.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.decode.sampling import Disparity, Sampling
from pipeline.stages import keyframes


@dataclass
class KeyImagesConfig(keyframes.KeyframesConfig):
    sampling: Sampling = field(default_factory=lambda: Disparity(num_frames=8))


STAGE = dataclasses.replace(
    keyframes.STAGE,
    name="key_images",
    description="MMI key images: 8 frames where the content changes most (disparity), as upright JPEG bytes",
    config_type=KeyImagesConfig,
)
