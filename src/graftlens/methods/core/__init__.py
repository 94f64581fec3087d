"""What every method shares and no method owns: recipe parts and their checks (:mod:`.parts`), the
registry and what readouts receive (:mod:`.registry`), weight grafting's readout
(:mod:`.grafting`), circuit files and path-patching stages (:mod:`.circuits`), and figure helpers
(:mod:`.figures`). Registers no kind."""
