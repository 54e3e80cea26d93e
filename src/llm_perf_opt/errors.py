"""Typed errors, every one the analysis and its Python API raise (`llm_perf_opt` exports them):
the CLI catches the base class once and prints one `Error: …` line (exit 2)."""


class LlmPerfOptError(Exception):
    """Base of every error caused by the user's input; the message says what to do."""


class TraceError(LlmPerfOptError):
    """The trace file cannot be analyzed as given."""


class TraceNotFoundError(TraceError):
    """The trace path does not exist."""


class WrongFileKindError(TraceError):
    """The file is not an SQLite export (a .nsys-rep, .qdstrm or something else)."""


class CorruptTraceError(TraceError):
    """The file looks like SQLite but cannot be read (truncated or damaged)."""


class MissingTableError(TraceError):
    """A table the analysis needs is absent from the export."""


class NoNvtxEventsError(MissingTableError):
    """The export holds no NVTX events (captured without `-t nvtx`, or no ranges were pushed)."""


class NoGpuOpsError(MissingTableError):
    """The export holds no kernels, memcpys or memsets (captured without `-t cuda`)."""


class SelectionError(LlmPerfOptError):
    """A range selection matched nothing or is malformed."""


class ConfigError(LlmPerfOptError):
    """A model or run configuration is invalid."""


class MissingInputError(LlmPerfOptError):
    """A fact the analysis needs is neither in the trace nor given on the command line."""


class TraceAccessError(TraceError):
    """The trace cannot be opened: permission denied, or not a regular file (FIFO, device)."""


class TraceLockedError(TraceError):
    """Another process holds a lock on the trace (it is being written)."""


class MissingColumnError(MissingTableError):
    """A table lacks a column the analysis needs (an unusual or edited export)."""


class TraceTooLargeError(TraceError):
    """A compressed trace would decompress past the size cap or the free temporary space."""


class OutputError(LlmPerfOptError):
    """An output cannot be written where asked (missing folder, read-only, disk full, an input)."""


class UnorderedTableError(TraceError):
    """A table is not stored in start order, so it cannot be read in batches; read it whole."""


class MetaError(ConfigError):
    """Run metadata (or a static compute report) does not match its schema; the message names
    the key and the source."""


class AnalysisError(LlmPerfOptError):
    """The trace and the facts given for it do not fit together."""


class NoGpuTimeError(AnalysisError):
    """A stage with FLOPs has no GPU time: its ranges launched no GPU work."""


class UnknownGpuError(LlmPerfOptError):
    """No peak is known for this GPU name and dtype; the user must pass one."""


class PeakSourceError(UnknownGpuError):
    """`--peak-source` is malformed, conflicts with `--peak-tflops`, or names a missing peak."""


class NoTracesError(SelectionError):
    """A directory or glob given on the command line matched no trace file."""


class RunSpecError(SelectionError):
    """A run given to compare is neither a trace nor a stored run."""


class DaskError(LlmPerfOptError):
    """The Dask scheduler cannot be used (not installed or not reachable)."""


class ResultsDbError(LlmPerfOptError):
    """The results database cannot be used as asked."""
