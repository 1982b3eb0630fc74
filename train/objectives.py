"""Per-micro-batch objectives: T3D (DDO + path loss) and block-diffusion SFT.

Both run the model on the `[prompt | clean | tail slot | noisy]` layout of `utils.masks` and keep
logits only for the noisy response columns (`logits_to_keep=noisy_slice`).
"""
from dataclasses import dataclass

import torch

from train import losses, noising
from utils.masks import training_layout


def noisy_logits(model, batch, noisy, block_size):
    """Logits [b, L, V] predicting the response from its noisy copy (logits at i predict token i)."""
    layout = training_layout(batch["prompt_ids"], batch["prompt_len"], batch["response_ids"], batch["response_len"],
                             noisy, block_size)
    return model(input_ids=layout["input_ids"], attention_mask=layout["attention_mask"],
                 position_ids=layout["position_ids"], logits_to_keep=layout["noisy_slice"]).logits


@dataclass
class T3DSettings:
    seed: int
    block_size: int
    mask_id: int
    vocab_ids: torch.Tensor  # token ids random replacement draws from
    mask_strategy: str = "trace"
    mask_ratios: tuple = (1.0, 0.75, 0.5, 0.25)
    mask_ratio_exponent: float = 8.0
    random_ratio: float = 0.1
    alpha: float = 0.5
    beta: float = 0.1
    reference_temp: float = 0.0
    path_k_steps: int = 4
    lambda_path: float = 0.2


def t3d_micro_step(model, ref_model, batch, epoch, s):
    """One reference forward (no grad) and one target forward on the same noisy input -> (loss, parts)."""
    noise = noising.t3d_noise(batch, epoch, s.seed, s.block_size, s.mask_id, s.mask_strategy, s.mask_ratios,
                              s.mask_ratio_exponent, s.random_ratio, s.vocab_ids)
    real, masked = batch["response_ids"], noise["masked"]
    with torch.no_grad():
        ref_logits = noisy_logits(ref_model, batch, noise["noisy"], s.block_size)
        u = noising.uniform(s.seed, epoch, noising.FAKE_SAMPLE, batch["index"], real.shape[1])
        fake = losses.fake_tokens(ref_logits, s.reference_temp, u)
        ref_logp = torch.log_softmax(ref_logits.float(), -1)
        ref_real = losses.masked_mean(losses.token_logp(ref_logp, real), masked)
        ref_fake = losses.masked_mean(losses.token_logp(ref_logp, fake), masked)
        del ref_logits, ref_logp
    logp = torch.log_softmax(noisy_logits(model, batch, noise["noisy"], s.block_size).float(), -1)
    tok_real = losses.token_logp(logp, real)
    ddo, ddo_real, ddo_fake = losses.ddo_loss(
        losses.masked_mean(tok_real, masked), ref_real, losses.masked_mean(losses.token_logp(logp, fake), masked),
        ref_fake, s.alpha, s.beta,
    )
    real_pos = torch.arange(real.shape[1], device=real.device)[None] < batch["real_len"][:, None]
    path = losses.path_loss(-tok_real, noise["rank"], real_pos, s.path_k_steps, s.block_size)
    loss = ddo + s.lambda_path * path
    return loss, {"loss": loss, "ddo_real": ddo_real, "ddo_fake": ddo_fake, "path": path,
                  "mask_ratio": noise["ratio"].float().mean()}


def sft_micro_step(model, batch, epoch, seed, block_size, mask_id):
    """Masked block-diffusion CE: per-block ratio r ~ U(0, 1], loss = mean CE over masked tokens."""
    noise = noising.sft_noise(batch, epoch, seed, block_size, mask_id)
    logits = noisy_logits(model, batch, noise["noisy"], block_size)
    loss = losses.masked_ce(logits, batch["response_ids"], noise["masked"])
    return loss, {"loss": loss, "masked_tokens": noise["masked"].sum().float()}
