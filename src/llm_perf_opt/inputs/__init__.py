"""What an analysis is told besides the GPU ops: the run's metadata, which ranges are the stages
and the serving engines' steps, the facts FLOPs and MFU need, and the small JSON files a user
names.

- `run_meta`: run metadata (`llm_perf_opt.run_meta/1`) read from the trace's mark or `--meta`.
- `stage_ranges`: which NVTX ranges are the stages and which belong to one image.
- `step_names`: which ranges are a serving engine's steps and what each name says of its batch.
- `facts`: metadata and flags combined into context lengths, dtype, GPU and wall times.
- `user_files`: the option files read safely, and `RunFiles`, everything a run reads and
  writes (outputs kept off inputs).
"""

__all__ = ["facts", "run_meta", "stage_ranges", "step_names", "user_files"]
