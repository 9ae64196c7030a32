"""``interest.v1``: generated stubs live here (``python -m proto.generate``), never edited by hand."""
