"""admission.config: configuration: the settings table, its parsers and rules, route policies."""
