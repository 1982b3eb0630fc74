"""Per-micro-batch objectives: T3D (DDO + path loss) and block-diffusion SFT.

Both run the model on the `[prompt | clean | tail slot | noisy]` layout of `t3d.model.masks`, on the noisy
response columns only (`logits_to_keep=noisy_slice`), and read just the log-probabilities they need from the
LM head, chunk by chunk (`t3d.train.token_logprobs`): no [b, L, V] logits or log-probabilities are ever held.
"""
from dataclasses import dataclass, field

import torch

from t3d.train import losses

from t3d.train import noising
from t3d.train import token_logprobs as tlp
from t3d.model.masks import training_layout


def noisy_forward(model, batch, noisy, block_size, **kwargs):
    """The model's output predicting the response from its noisy copy (position i predicts token i)."""
    layout = training_layout(batch["prompt_ids"], batch["prompt_len"], batch["response_ids"], batch["response_len"],
                             noisy, block_size)
    return model(input_ids=layout["input_ids"], attention_mask=layout["attention_mask"],
                 position_ids=layout["position_ids"], logits_to_keep=layout["noisy_slice"], **kwargs)


def noisy_logits(model, batch, noisy, block_size):
    """Full logits [b, L, V] (for inspection and tests; the objectives use `noisy_forward` with a chunked head)."""
    return noisy_forward(model, batch, noisy, block_size).logits


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
    lambda_ddo: float = 1.0  # 0 = path loss only (an ablation)
    logits_budget_bytes: int = tlp.LOGITS_BUDGET_BYTES  # one chunk of fp32 logits (memory, not numbers)
    ddo_reduction: str = "mean"  # mean (the original) or sum over the masked tokens of each sample's log-ratio
    ddo_grad_scale: float = 1.0  # multiplies the DDO gradient only: the logged loss keeps its meaning
    reference_update: str = "rounds"  # rounds: refreshed by the trainer at round ends; ema: moved every step here
    ema_decay: float = 0.999
    exact_grad_share: bool = False  # opt-in: two extra backward passes for the parameter-gradient share
    ema_state: dict = field(default_factory=dict, init=False, repr=False)


@torch.no_grad()
def ema_update(ref, model, decay, state):
    """ref <- decay * ref + (1 - decay) * model, once per optimizer step: the update is skipped while the
    model's parameters are unchanged since the last one (micro-batches of one accumulation window), which the
    tensors' version counters tell without comparing values. Returns whether it moved the reference."""
    params = list(model.parameters())
    version = sum(p._version for p in params)
    if state.get("version") == version:
        return False
    state["version"] = version
    for p_ref, p in zip(ref.parameters(), params):
        if p_ref.shape != p.shape:  # e.g. ZeRO-3 partitions the target's parameters
            raise ValueError("training.reference_update=ema needs the target's full parameters on every process "
                             f"(got {tuple(p.shape)} for a reference parameter of {tuple(p_ref.shape)})")
        p_ref.lerp_(p.detach().to(p_ref.dtype), 1.0 - decay)  # lerp: exactly ref when ref == model
    return True


def t3d_micro_step(model, ref_model, batch, epoch, s):
    """One reference forward (no grad) and one target forward on the same noisy input -> (loss, parts)."""
    if s.reference_update == "ema":
        ema_update(ref_model, model, s.ema_decay, s.ema_state)
    noise = noising.t3d_noise(batch, epoch, s.seed, s.block_size, s.mask_id, s.mask_strategy, s.mask_ratios,
                              s.mask_ratio_exponent, s.random_ratio, s.vocab_ids)
    real, masked, budget = batch["response_ids"], noise["masked"], s.logits_budget_bytes
    reduce = losses.masked_sum if s.ddo_reduction == "sum" else losses.masked_mean
    with torch.no_grad():
        u = noising.uniform(s.seed, epoch, noising.FAKE_SAMPLE, batch["index"], real.shape[1])
        fake, ref_logp = noisy_forward(ref_model, batch, noise["noisy"], s.block_size,
                                       head_fn=tlp.reference_choice(real, s.reference_temp, u, budget)).head_output
        ref_real, ref_fake = (reduce(v, masked) for v in ref_logp.unbind(-1))
    logp = noisy_forward(model, batch, noise["noisy"], s.block_size,
                         head_fn=tlp.token_logprobs(torch.stack([real, fake], -1), budget)).head_output
    real_pos = torch.arange(real.shape[1], device=real.device)[None] < batch["real_len"][:, None]

    def terms(logp):
        """(DDO term, path term, ddo_real, ddo_fake, l_real, l_fake) from the per-token log-probabilities."""
        tok_real, tok_fake = logp.unbind(-1)
        l_real, l_fake = reduce(tok_real, masked), reduce(tok_fake, masked)
        ddo, ddo_real, ddo_fake = losses.ddo_loss(l_real, ref_real, l_fake, ref_fake, s.alpha, s.beta)
        path = losses.path_loss(-tok_real, noise["rank"], real_pos, s.path_k_steps, s.block_size)
        if s.ddo_grad_scale != 1.0:
            ddo = losses.scale_grad(ddo, s.ddo_grad_scale)
        return ddo, path, ddo_real, ddo_fake, l_real, l_fake

    ddo, path, ddo_real, ddo_fake, l_real, l_fake = terms(logp)
    loss = s.lambda_ddo * ddo + s.lambda_path * path
    with torch.no_grad():
        disc_acc = losses.discriminator_accuracy(s.beta * (l_real - ref_real), s.beta * (l_fake - ref_fake))
    parts = {"loss": loss, "ddo_real": ddo_real, "ddo_fake": ddo_fake, "path": path,
             "mask_ratio": noise["ratio"].float().mean(), "disc_acc": disc_acc}
    if logp.requires_grad:
        # Both terms reach the parameters only through these per-token log-probabilities, so their gradients
        # there split the signal. Measured on a detached copy: a few [b, L] ops, no model or head pass, and no
        # autograd pass over the model's graph (distributed engines hook that graph and would see a backward).
        with torch.enable_grad():
            shadow = logp.detach().requires_grad_()
            ddo_s, path_s = terms(shadow)[:2]
            parts["ddo_grad_share"] = losses.gradient_share(s.lambda_ddo * ddo_s, s.lambda_path * path_s,
                                                            [shadow]).detach()
        if s.exact_grad_share:  # the parameters' own gradients: two extra backward passes through the model
            params = [p for p in model.parameters() if p.requires_grad]
            parts["ddo_grad_share_exact"] = losses.gradient_share(s.lambda_ddo * ddo, s.lambda_path * path,
                                                                  params).detach()
    return loss, parts


def sft_micro_step(model, batch, epoch, seed, block_size, mask_id, logits_budget_bytes=tlp.LOGITS_BUDGET_BYTES):
    """Masked block-diffusion CE: per-block ratio r ~ U(0, 1], loss = mean CE over masked tokens."""
    noise = noising.sft_noise(batch, epoch, seed, block_size, mask_id)
    head_fn = tlp.token_logprobs(batch["response_ids"][..., None], logits_budget_bytes)
    logp = noisy_forward(model, batch, noise["noisy"], block_size, head_fn=head_fn).head_output[..., 0]
    loss = losses.masked_ce(logp, noise["masked"])
    return loss, {"loss": loss, "masked_tokens": noise["masked"].sum().float()}
