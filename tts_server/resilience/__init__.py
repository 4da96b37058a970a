"""Staying up under faults and load: circuit breakers, the degradation ladder, run state."""
