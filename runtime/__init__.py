"""Runtime: the DeSTA2.5-Audio model, audio I/O, prompts, checkpoints, bundled models and backends."""
