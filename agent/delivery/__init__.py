"""Delivery: claim a batch, send it to Dodo, settle every row (worker → batch → client → settle)."""
