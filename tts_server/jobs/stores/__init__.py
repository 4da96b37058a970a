"""Job stores: the contract (base), in memory, and in Redis."""
