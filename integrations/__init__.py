"""Bridges from the toolkit to other evaluation tools (lm-evaluation-harness: `integrations.lm_eval_sdar`)."""
