"""admission.request: one admitted request: its exchange with the app, timeouts, body, responses."""
