"""Ray job entrypoint: `ray job submit --working-dir . -- python -m jobs.run jobs/configs/msrvtt.yaml`.

Inside a Ray job RAY_ADDRESS is set, so the run joins that cluster; elsewhere it starts a local
Ray instance. Arguments are the same as `tvr run`.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
