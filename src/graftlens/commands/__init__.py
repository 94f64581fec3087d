"""Sub-commands of the ``graftlens`` CLI, one module per topic; :mod:`graftlens.cli` assembles them."""
