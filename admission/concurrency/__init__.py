"""admission.concurrency: the concurrency window, priority classes, the adaptive window."""
