"""The functional core: pure decisions, table-tested without I/O."""
