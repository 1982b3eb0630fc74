"""Block-diffusion decoding: the decoder, the rollout job and shard merging."""
