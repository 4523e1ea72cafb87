"""admission.lifecycle: the service's life: lifespan, drain, signals, lifetimes."""
