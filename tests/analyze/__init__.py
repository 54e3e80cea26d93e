"""mfu-analyze: MFU math, peaks, metadata, reports, plots and the CLI."""
