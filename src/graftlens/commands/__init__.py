"""Sub-commands of the ``graftlens`` CLI, one module per topic; `graftlens.cli` assembles them."""
