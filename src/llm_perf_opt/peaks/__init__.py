"""The denominators of MFU and MBU: the GPU peak table, where a run's peak comes from
(table, measured, a number), and the calibration a runner measured.

- `table`: the dense peak FLOP/s and bandwidth per GPU and dtype (docs/peaks.md).
- `sources`: `--peak-source`: which peak a report divides by, and every known one beside it.
- `calibration`: the achievable peak a `--calibrate` run measured, from the run metadata.
"""

__all__ = ["calibration", "sources", "table"]
