"""Stage 4, report: the TID 1500 Structured Report of a result, with its codes."""
