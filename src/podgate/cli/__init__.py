"""Command-line entry points (``podgate``, also ``kubectl podgate``)."""
