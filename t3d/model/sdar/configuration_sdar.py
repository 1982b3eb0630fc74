"""SDAR configuration: Qwen3's decoder hyper-parameters; blocks live in the caller's attention mask.

One class for transformers 4.57 and 5.x. The on-disk schema is SDAR's own (`rope_theta` + `rope_scaling`,
as the released config.json files write them) under both, so a checkpoint written with either version loads in the other and in SDAR's
original remote code. In memory the RoPE settings live in one standardised dict, `rope_parameters`
(transformers 5's form: `rope_type`, `rope_theta` and the scaling keys); `rope_theta` and `rope_scaling`
are views of it. transformers 5 turned `rope_scaling` into an alias of `rope_parameters` (never None,
theta inside) and saves only `rope_parameters`; this class keeps SDAR's meaning of both fields.
"""
from transformers import PretrainedConfig

try:  # transformers 4.x validates through this function; 5.x validates in PreTrainedConfig.__post_init__
    from transformers.modeling_rope_utils import RotaryEmbeddingConfigMixin  # noqa: F401
    _VALIDATED_BY_BASE = True
except ImportError:
    from transformers.modeling_rope_utils import rope_config_validation
    _VALIDATED_BY_BASE = False


def _rope_parameters(rope_theta, rope_scaling):
    """SDAR's two fields -> one dict. Like the original, a legacy `type` key is copied to `rope_type`."""
    params = dict(rope_scaling or {})
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    params["rope_theta"] = float(rope_theta)
    return params


class SDARConfig(PretrainedConfig):
    model_type = "sdar"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    def __init__(
        self,
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        head_dim=128,
        hidden_act="silu",
        max_position_embeddings=32768,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=28,
        attention_dropout=0.0,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        # A config.json written by a transformers-5 tool may hold the standardised dict instead of our fields.
        saved = kwargs.pop("rope_parameters", None)
        if saved:
            saved = dict(saved)
            rope_theta = saved.pop("rope_theta", rope_theta)
            rope_scaling = saved if saved.get("rope_type", saved.get("type", "default")) != "default" else None
        self.rope_parameters = _rope_parameters(rope_theta, rope_scaling)
        self.attention_bias = attention_bias
        # Stored for checkpoint compatibility; SDAR's attention is shaped only by the mask.
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        if not _VALIDATED_BY_BASE:
            rope_config_validation(self)
        # Real SDAR configs carry this flag; our loss never fuses, but keep the attribute readable.
        kwargs.setdefault("fuse_cross_entropy", False)
        # Token ids are explicit: transformers 5 no longer defines them on the base config.
        super().__init__(tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id,
                         bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)

    @property
    def rope_theta(self):
        return self.rope_parameters["rope_theta"]

    @rope_theta.setter
    def rope_theta(self, value):
        self.rope_parameters = _rope_parameters(value, self.rope_scaling)

    @property
    def rope_scaling(self):
        """SDAR's field: None for plain RoPE, else the scaling dict (with `rope_type`, without theta)."""
        if self.rope_parameters["rope_type"] == "default":
            return None
        return {k: v for k, v in self.rope_parameters.items() if k != "rope_theta"}

    @rope_scaling.setter
    def rope_scaling(self, value):
        self.rope_parameters = _rope_parameters(self.rope_theta, value)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # Real SDAR config.json files carry their training-time `attn_implementation: flex_attention`:
        # transformers 5 would obey it, 4.x ignores it. Ignore it here under both: the toolkit's loader
        # (t3d.model.checkpoint.choose_attn_implementation) reads the file's value itself and uses it when it
        # runs on the device ("auto"), so the choice is the same under every transformers version.
        config_dict = {k: v for k, v in config_dict.items() if k != "attn_implementation"}
        return super().from_dict(config_dict, **kwargs)

    def to_dict(self):
        out = super().to_dict()
        out.pop("rope_parameters", None)
        out["rope_theta"], out["rope_scaling"] = self.rope_theta, self.rope_scaling
        return out


__all__ = ["SDARConfig"]
