"""Making models fast without making them wrong: variants, their accuracy gate, and sweeps."""
