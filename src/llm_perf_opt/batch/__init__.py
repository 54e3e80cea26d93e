"""Many runs: expand paths into traces, analyze them (worker processes or Dask), store each
report in the results database, and compare two groups of runs.

- `runs`: expand globs and folders, declare the traces as inputs, run a batch, its summary.
- `fanout`: analyze each trace in a worker process that ends with the command, or on Dask.
- `resultsdb`: a report as rows of the results database (sqlite-utils), and reading them back.
- `deltas`: per-stage deltas of two groups of runs with a noise band (pure).
- `stopping`: SIGINT/SIGTERM/SIGHUP end the command and its workers, temporaries removed.
"""

__all__ = ["deltas", "fanout", "resultsdb", "runs", "stopping"]
