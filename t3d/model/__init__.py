"""The SDAR model, its attention masks, and checkpoint finding, checking, fingerprinting and loading."""
