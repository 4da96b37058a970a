"""The two-tier audio cache (in-process L1, Redis L2) and the private redis-server."""
