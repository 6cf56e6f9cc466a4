"""Delivery: claim a batch, send it to Dodo, settle every row; data flows one way.

``worker`` (the drain loop and the sender pool) claims rows and ``batch.prepare`` applies the late
policy; ``send`` sends a batch through ``client``, narrowing it down as answers require; ``settle``
moves every row to its next state. Beside them: ``backoff`` (the retry rules and the destination
breaker), ``pacing`` (the token bucket), ``pause`` (the pause/probe state machine), ``keys`` (the API
key), ``clockwatch`` (repair after a wall-clock step) and ``scheduler`` (when drains run).
"""
