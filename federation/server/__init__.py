"""The aggregator (Flower ServerApp): strategy, pooled evaluation, run outputs."""
