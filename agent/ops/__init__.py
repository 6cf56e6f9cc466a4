"""Operations: status, metrics, retention and the ops HTTP routes (/metrics, /v1/dlq)."""
