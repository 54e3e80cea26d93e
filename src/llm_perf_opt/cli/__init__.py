"""Command-line shells (click) over the library: options in, one library call, one render call."""
