"""The pipeline as a whole: its config (`RunConfig`, one section per stage), running the dataset
manifest and then every selected stage in order, and reading a run's outputs back (`tvr verify`,
`tvr status` with every stage's schema and order). The one package that knows every stage and
the runner together; the CLI and the demo sit above it."""

from pipeline.flow.whole_run import (
    DatasetConfig,
    RunConfig,
    build_and_write_manifest,
    describe_manifest,
    output_schemas,
    output_status,
    run_pipeline,
    verify_outputs,
)

__all__ = ["DatasetConfig", "RunConfig", "build_and_write_manifest", "describe_manifest", "output_schemas",
           "output_status", "run_pipeline", "verify_outputs"]
