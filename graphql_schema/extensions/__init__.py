"""The schema's extensions besides the permission checks: errors (``errors``), what one
document and one request may use (``limits``, with ``cost`` and ``rates``)."""
