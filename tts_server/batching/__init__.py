"""Micro-batching in front of the Piper pool: the generic batcher and its pool adapter."""
