"""`python -m benchmarks.gen_trace`: see `benchmarks.gen_trace.cli`."""

from benchmarks.gen_trace.cli import main

raise SystemExit(main())
