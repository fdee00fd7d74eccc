"""Training: self-generated alignment data, the connector trainer, evaluation (see README)."""
