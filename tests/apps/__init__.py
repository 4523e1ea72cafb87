"""tests.apps: small applications the drain tests serve in real processes."""
