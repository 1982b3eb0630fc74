"""SDAR: a Qwen3-style decoder whose attention pattern is given entirely by the caller's mask.

Block diffusion needs two things a causal LM does not have:
  * logits at position i predict the token *at* i (no shift): masked positions are filled in place;
  * attention is bidirectional inside a block and causal across blocks, which the caller expresses
    as a mask (True / 1 = may attend). There is no implicit causal mask anywhere in this file.

State-dict names and shapes match the released SDAR checkpoints (JetLM/SDAR-*-Chat).
"""
import functools
import importlib
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_sdar import SDARConfig


class SDARBlockCache:
    """Preallocated K/V for block decoding.

    `length` tokens are committed. A forward writes its new K/V into the slots right after them and
    attends over committed + new; the slots stay scratch (overwritten by the next forward) unless the
    forward is told to commit the first `n` of its tokens. So the active block can be denoised many
    times against the cache without modifying it, and a finished block is committed inside the next
    block's first forward instead of a separate pass.
    """

    def __init__(self, config: SDARConfig, batch_size: int, max_length: int, dtype=None, device=None):
        shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.key = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.value = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.length = 0
        self.max_length = max_length

    def write(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor):
        end = self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"SDARBlockCache overflow: {end} tokens > max_length {self.max_length}")
        self.key[layer_idx][:, :, self.length:end] = key
        self.value[layer_idx][:, :, self.length:end] = value
        return self.key[layer_idx][:, :, :end], self.value[layer_idx][:, :, :end]

    def commit(self, num_tokens: int):
        self.length += num_tokens

    def select_rows(self, rows: torch.Tensor):
        """Keep only batch rows `rows` (drop finished sequences)."""
        self.key = [k.index_select(0, rows) for k in self.key]
        self.value = [v.index_select(0, rows) for v in self.value]


class SDARRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def _default_inv_freq(theta, dim, device=None):
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))


def _dynamic_ntk_inv_freq(theta, dim, factor, max_position_embeddings, seq_len, device=None):
    """NTK-aware base for a sequence of `seq_len` (int at init, int64 tensor in forward: the tensor case
    computes the base in fp32, as transformers' `_compute_dynamic_ntk_parameters` does, bit for bit)."""
    base = theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    return _default_inv_freq(base, dim, device)


class SDARRotaryEmbedding(nn.Module):
    """RoPE as SDAR's remote code computes it (transformers' Qwen3 rotary embedding).

    `dynamic` NTK scaling follows transformers' `dynamic_rope_update` exactly, state included: a forward
    whose longest position p exceeds every length seen so far recomputes `inv_freq` for seq_len = p + 1
    (it is kept for shorter forwards above `max_position_embeddings`), and a forward shorter than
    `max_position_embeddings` restores the original frequencies. Other scaled types come from
    transformers' static initialisers.
    """

    def __init__(self, config: SDARConfig, device=None):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        supported = {"default", "dynamic"} | set(ROPE_INIT_FUNCTIONS) - {"longrope"}
        if self.rope_type not in supported:
            raise ValueError(f"rope_scaling type {self.rope_type!r} is not supported; use one of {sorted(supported)}")
        self.reset_parameters(device)

    def reset_parameters(self, device=None):
        """(Re)compute the trained-length frequencies. `inv_freq` is not in the state dict: transformers 5 loads
        models on the meta device and materialises such buffers empty, so `_init_weights` calls this."""
        config, params = self.config, self.config.rope_parameters
        self.original_max_seq_len = self.max_seq_len_cached = config.max_position_embeddings
        self.attention_scaling = 1.0
        if self.rope_type == "default":
            inv_freq = _default_inv_freq(params["rope_theta"], config.head_dim, device)
        elif self.rope_type == "dynamic":
            self.ntk = functools.partial(_dynamic_ntk_inv_freq, params["rope_theta"], config.head_dim,
                                         params["factor"], config.max_position_embeddings)
            inv_freq = self.ntk(config.max_position_embeddings, device=device)
        else:
            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[self.rope_type](config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq

    def _dynamic_update(self, position_ids):
        seq_len = int(position_ids.max()) + 1
        if seq_len > self.max_seq_len_cached:  # growth
            seq_len_tensor = torch.tensor(seq_len, device=position_ids.device)
            self.register_buffer("inv_freq", self.ntk(seq_len_tensor, device=position_ids.device), persistent=False)
            self.max_seq_len_cached = seq_len
        if seq_len < self.original_max_seq_len < self.max_seq_len_cached:  # back within the trained length
            self.original_inv_freq = self.original_inv_freq.to(position_ids.device)
            self.register_buffer("inv_freq", self.original_inv_freq, persistent=False)
            self.max_seq_len_cached = self.original_max_seq_len

    @torch.no_grad()
    def forward(self, x, position_ids):
        if self.rope_type == "dynamic":
            self._dynamic_update(position_ids)
        # Angles in fp32 whatever the model dtype: bf16 positions lose precision past ~256.
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


def flex_block_mask(mask, batch, q_len, k_len):
    """FlexAttention's BlockMask from a dense bool mask [b or 1, 1, q, k] (True = attend). Built once per forward
    and shared by every layer: building it scans the whole mask, which would otherwise happen in each layer."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask = mask.expand(batch, -1, -1, -1)

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[b, 0, q_idx, kv_idx]

    return create_block_mask(mask_mod, batch, None, q_len, k_len, device=mask.device)


def _flex_attention(q, k, v, block_mask, scale):
    """FlexAttention (compiled on CUDA; eager on CPU, where torch has its forward but no backward)."""
    from torch.nn.attention.flex_attention import flex_attention

    kernel = _compiled_flex(flex_attention) if q.is_cuda else flex_attention
    return kernel(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)


@functools.lru_cache(maxsize=1)
def _compiled_flex(flex_attention):
    return torch.compile(flex_attention)


def _is_block_mask(mask):
    try:
        from torch.nn.attention.flex_attention import BlockMask
    except ImportError:
        return False
    return isinstance(mask, BlockMask)


def _eager_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v written out: the plain reference, any device, any dtype (softmax in fp32)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return torch.softmax(scores, dim=-1).to(q.dtype) @ v


def sdar_attention(q, k, v, mask, scale, implementation="sdpa"):
    """q [b, h, q, d], k/v [b, kv, k, d], mask bool [b, 1, q, k] or additive float or None (or, for
    flex_attention, a BlockMask from `flex_block_mask`) -> [b, h, q, d].

    SDPA is the reference path and runs everywhere. On CUDA, flash-attn serves the unmasked case
    and FlexAttention serves `implementation="flex_attention"`; "eager" is the formula written out.
    All agree with SDPA to tolerance.
    """
    if _is_block_mask(mask):
        return _flex_attention(q, k, v, mask, scale)
    if q.is_cuda and mask is None and implementation in ("sdpa", "flash_attention_2"):
        flash = _flash_attn_func()
        if flash is not None and q.dtype in (torch.float16, torch.bfloat16):
            out = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=False)
            return out.transpose(1, 2)
    if implementation == "flex_attention" and mask is not None and mask.dtype == torch.bool:
        return _flex_attention(q, k, v, flex_block_mask(mask, q.shape[0], q.shape[2], k.shape[2]), scale)
    if implementation == "eager":
        return _eager_attention(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def normalize_attention_mask(attention_mask, dtype, key_length):
    """Bring a caller's mask to SDPA form: None, bool (True = attend) or additive float. Called once per forward.

    Shapes: 4-D [b, 1 or h, q, k]; 3-D [b, q, k] (SDAR's own sampler slices a [1, n, n] mask); 2-D [b, k] key
    padding. Keys beyond `key_length` are dropped, as the original does. Values:
      * bool: True = attend. Integer: > 0 = attend (0/1, as training code passes it).
      * floating, one rule (one reduction): if any value is > 0 it is SDAR's 0/1 form, > 0 = attend (the
        original remote code's reading; SDAR's sampler passes float 0/1); otherwise it is additive, 0 = attend
        and negative or -inf = blocked. An all-zero float mask is therefore additive: attend everywhere. (The
        original reads it as "every key blocked" and averages uniformly over all keys, which no caller means.)
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        attention_mask = attention_mask[:, None, None, :]
    elif attention_mask.dim() == 3:
        attention_mask = attention_mask[:, None]
    if attention_mask.dim() != 4:
        raise ValueError(f"attention_mask must be 2-D, 3-D or 4-D, got shape {tuple(attention_mask.shape)}")
    if attention_mask.shape[-1] < key_length:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} keys but attention has {key_length}")
    attention_mask = attention_mask[..., :key_length]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_floating_point() and not attention_mask.amax() > 0:
        return attention_mask.to(dtype)
    return attention_mask > 0


class SDARMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SDARAttention(nn.Module):
    def __init__(self, config: SDARConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = SDARRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.k_norm = SDARRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None):
        """`attention_mask` is already normalised (None, bool or additive) and covers cache + new keys."""
        batch, q_len, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(batch, q_len, -1, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(batch, q_len, -1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, q_len, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.write(self.layer_idx, k, v)
        out = sdar_attention(q, k, v, attention_mask, self.scaling, self.config._attn_implementation or "sdpa")
        return self.o_proj(out.transpose(1, 2).reshape(batch, q_len, -1))


class SDARDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: SDARConfig, layer_idx: int):
        super().__init__()
        self.self_attn = SDARAttention(config, layer_idx)
        self.mlp = SDARMLP(config)
        self.input_layernorm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, past_key_values=None):
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_values
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class SDARPreTrainedModel(PreTrainedModel):
    config_class = SDARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDARDecoderLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, SDARRMSNorm):
            module.weight.data.fill_(1.0)
        elif isinstance(module, SDARRotaryEmbedding):
            module.reset_parameters(module.inv_freq.device)


class SDARModel(SDARPreTrainedModel):
    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([SDARDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = SDARRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = SDARRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[SDARBlockCache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        commit_kv: int = 0,
        output_hidden_states: bool = False,
        store_kv: Optional[bool] = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`past_key_values` is an `SDARBlockCache` (or None); `commit_kv` = how many leading new tokens to
        commit to it after this forward. `attention_mask` (see `normalize_attention_mask`) must cover cache +
        new keys. `store_kv` is SDAR's original API on the same cache: True = append this forward's K/V
        (commit all new tokens), False = attend to cache + new tokens without storing them."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if past_key_values is not None and not isinstance(past_key_values, SDARBlockCache):
            raise ValueError(f"past_key_values must be an SDARBlockCache, got {type(past_key_values).__name__} "
                             "(SDAR's DynamicCache + store_kv calls work unchanged on "
                             "SDARBlockCache(model.config, batch_size, max_length))")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        new_tokens = inputs_embeds.shape[1]
        if store_kv is not None:
            if commit_kv:
                raise ValueError("pass store_kv (SDAR's original API) or commit_kv, not both")
            if store_kv and past_key_values is None:
                raise ValueError("store_kv=True needs past_key_values=SDARBlockCache(model.config, batch_size, "
                                 "max_length); without one this forward's K/V would be dropped")
            commit_kv = new_tokens if store_kv else 0
        past = past_key_values.length if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + new_tokens, device=inputs_embeds.device)[None]
        attention_mask = normalize_attention_mask(attention_mask, inputs_embeds.dtype, past + new_tokens)
        if self.config._attn_implementation == "flex_attention" and attention_mask is not None \
                and attention_mask.dtype == torch.bool:
            attention_mask = flex_block_mask(attention_mask, inputs_embeds.shape[0], new_tokens, past + new_tokens)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, attention_mask, past_key_values)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        hidden_states = self.norm(hidden_states)
        if past_key_values is not None and commit_kv:
            past_key_values.commit(commit_kv)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, past_key_values=past_key_values, hidden_states=all_hidden_states
        )


NO_GENERATE = ("SDAR is a block-diffusion model and does not decode left to right: use "
               "model.diffusion_generate(...)")


class SDARForCausalLM(SDARPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # dict: the form both 4.57 and 5.x read

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.model = SDARModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def apply_head(self, hidden):
        """lm_head over hidden [b, n, H] -> [b, n, V], always as one 2-D matmul on contiguous rows.

        A strided 3-D input (hidden_states[:, -n:]) would make matmul fall back to bmm over the head weight
        expanded per batch row whenever that weight needs no gradient (a merged adapter, any frozen model):
        a [b, H, V] copy per forward, 200x slower at SDAR-4B's vocabulary. reshape copies only the kept
        rows; on an already contiguous input it is a view and the result is bit-identical."""
        rows = hidden.reshape(-1, hidden.shape[-1])
        return self.lm_head(rows).view(*hidden.shape[:-1], -1)

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def diffusion_generate(self, inputs, **settings):
        """Block-diffusion decoding with the t3d toolkit's decoder, the one its rollout and evaluation run:
        token ids, a [b, L] tensor or chat-turn strings (with tokenizer=) in; sequences, optional step maps and
        texts out (settings: block_size, steps_per_block, max_new_tokens, temperature, top_k, top_p,
        remasking_strategy, dynamic_threshold, seed, return_step_maps). This file also travels alone inside
        checkpoints (trust_remote_code), so the toolkit is imported by name, only when decoding is asked for."""
        try:
            generation = importlib.import_module("t3d.decode.generation")
        except ImportError:
            raise ImportError("diffusion_generate decodes with the t3d toolkit's decoder: pip install t3d") from None
        return generation.diffusion_generate(self, inputs, **settings)

    # transformers' left-to-right decoding does not apply: SDAR is no GenerationMixin, and generate and
    # prepare_inputs_for_generation both raise one line pointing at diffusion_generate. The second one exists for
    # PEFT: PeftModelForCausalLM (task_type CAUSAL_LM adapters, AutoPeftModelForCausalLM) keeps a reference to it.
    # can_generate answers False itself: PreTrainedModel's version would find prepare_inputs_for_generation and
    # warn that the model "has generative capabilities"; so no generation_config is made or saved, also for the
    # class trust_remote_code loads (transformers appends GenerationMixin after it, whose methods these override).
    @classmethod
    def can_generate(cls) -> bool:
        return False

    def generate(self, *args, **kwargs):
        raise NotImplementedError(NO_GENERATE)

    def prepare_inputs_for_generation(self, *args, **kwargs):
        raise NotImplementedError(NO_GENERATE)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[SDARBlockCache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        commit_kv: int = 0,
        store_kv: Optional[bool] = None,
        logits_to_keep: Union[int, slice, torch.Tensor] = 0,
        output_hidden_states: bool = False,
        head_fn=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits at position i predict token i (no shift). `labels` (-100 = ignore) give a plain CE loss.
        `logits_to_keep`: int n keeps the last n positions (0 = all), a slice or index tensor selects positions.
        `head_fn(hidden [b, n, H], lm_head)`: replaces `lm_head(hidden)` on the kept positions; its result is
        returned as `head_output` (logits None). It runs here, inside the wrapped model's forward, so DeepSpeed
        ZeRO-3 gathers `lm_head` whenever head_fn calls it (e.g. chunk by chunk: t3d.train.token_logprobs)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            store_kv=store_kv,
            inputs_embeds=inputs_embeds,
            commit_kv=commit_kv,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        if head_fn is not None:
            out = CausalLMOutputWithPast(past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states)
            out["head_output"] = head_fn(hidden_states[:, keep], self.lm_head)
            return out
        logits = self.apply_head(hidden_states[:, keep])
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels[:, keep].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )


__all__ = ["SDARBlockCache", "SDARForCausalLM", "SDARModel", "SDARPreTrainedModel", "sdar_attention"]
