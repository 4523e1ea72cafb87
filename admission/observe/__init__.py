"""admission.observe: what admission shows: metrics and its own endpoints."""
