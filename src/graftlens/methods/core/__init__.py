"""What every method shares and no method owns: recipe parts and their checks (`.parts`), the
registry and what readouts receive (`.registry`), weight grafting's readout
(`.grafting`), circuit files and path-patching stages (`.circuits`), and figure helpers
(`.figures`). Registers no kind."""
