"""Shared building blocks every entry script imports: config, prompts, masks, decoding, grading, I/O."""
