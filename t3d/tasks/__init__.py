"""Tasks: prompts, answer extraction, dataset loading and the synthetic task generators."""
