"""Integrations with other tools: the lm-evaluation-harness model sdar_bd."""
