"""SDAR registered with the transformers Auto classes, so checkpoints load without trust_remote_code."""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_sdar import SDARConfig
from .modeling_sdar import SDARBlockCache, SDARForCausalLM, SDARModel, SDARPreTrainedModel, sdar_attention

AutoConfig.register("sdar", SDARConfig, exist_ok=True)
AutoModel.register(SDARConfig, SDARModel, exist_ok=True)
AutoModelForCausalLM.register(SDARConfig, SDARForCausalLM, exist_ok=True)

__all__ = ["SDARBlockCache", "SDARConfig", "SDARForCausalLM", "SDARModel", "SDARPreTrainedModel", "sdar_attention"]
