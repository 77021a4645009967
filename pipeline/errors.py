"""Errors a user can act on; jobs print them as one clear line, no traceback."""


class PipelineError(Exception):
    """Bad input or configuration, explained in the message."""


class IngestError(PipelineError):
    """The source graph or its features failed validation."""


class CorruptFile(PipelineError):
    """A Parquet file of a published version (or of a source) cannot be read."""
