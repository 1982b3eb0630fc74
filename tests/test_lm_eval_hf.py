"""lm-eval's own `hf` model loads a toolkit checkpoint through trust_remote_code (the checkpoint carries its code)
and scores requests with it; generation tasks belong to `sdar_bd`, which decodes block by block."""
import math

import pytest

from t3d.common.paths import CHECKOUT


@pytest.mark.slow
def test_lm_eval_hf_model_loads_a_checkpoint_by_its_own_code():
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(CHECKOUT / "models" / "sdar-tiny"), trust_remote_code=True, device="cpu", batch_size=2)
    assert type(lm.model).__module__.startswith("transformers_modules")  # the checkpoint's modeling_sdar.py
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=("Compute 1+2.", answer), idx=0)
                for answer in (" 3", " 4")]
    scores = lm.loglikelihood(requests)
    assert len(scores) == 2 and all(math.isfinite(logp) and logp < 0 for logp, _ in scores)
