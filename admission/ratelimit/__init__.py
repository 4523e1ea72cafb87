"""admission.ratelimit: the rate gate, route matching, client keys, the policies' limiter and
the RateLimit fields."""
