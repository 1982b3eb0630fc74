"""One prompt builder for rollout, training and evaluation, so their prompts are byte-identical.

The user message follows the reference's per-task instructions; the chat template comes from the
tokenizer (`apply_chat_template(..., add_generation_prompt=True)`), so the prompt ends with the
assistant header *including* its newline, exactly as training concatenates prompt + response.
"""
import weakref

from t3d.common.io import DataError

DATA_TYPES = ("math", "option", "code")

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_MATH_PREFIX = "You need to put your final answer in \\boxed{}. This is the problem:\n"
OPTION_INSTRUCTION = (
    "You need to think step by step and put the final option (A, B, C, or D only\u2014no other character) in \\boxed{}."
)
STDIO_INSTRUCTION = (
    "You should put your code in ```python ```. Use input() to read input and print() to produce output in your script."
)
FUNCTION_INSTRUCTION = (
    "Place your code within a single Python code block ```python ```. Do not include more than one code block."
)


def user_message(item, data_type, start_with_think=False):
    question = item["question"]
    if data_type == "math":
        return f"{THINK_MATH_PREFIX}{question}" if start_with_think else f"{question}\n{MATH_INSTRUCTION}"
    if data_type == "option":
        return f"This is the problem:\n{question}\n{OPTION_INSTRUCTION}"
    if data_type == "code":
        method = item.get("test_method", "function")
        instruction = STDIO_INSTRUCTION if method == "stdio" else FUNCTION_INSTRUCTION
        return f"This is the problem:\n{question}\n{instruction}"
    raise DataError(f"unknown data_type '{data_type}': expected one of {', '.join(DATA_TYPES)}")


def build_prompt(tokenizer, item, data_type, start_with_think=False):
    """Chat-templated prompt text for one dataset item (question, and `prefix` for function-style code)."""
    messages = [{"role": "user", "content": user_message(item, data_type, start_with_think)}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if start_with_think and data_type != "code":
        prompt += "<think>"
    if data_type == "code" and item.get("test_method", "function") == "function":
        prompt += item.get("prefix", "")  # literal text, never template source
    return prompt


_CONTENT = "\ue000t3d-user-content\ue000"  # a private-use sentinel no template or user text contains


_FRAMES = weakref.WeakKeyDictionary()  # tokenizer -> (its chat template, control tokens, text before, after)


def _chat_frame(tokenizer):
    """(control-token strings, text before, text after) a user message's content in the tokenizer's chat
    template; rendered once per tokenizer and template, not once per prompt."""
    template = getattr(tokenizer, "chat_template", None)
    if tokenizer not in _FRAMES or _FRAMES[tokenizer][0] != template:
        controls = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
        before = after = ""
        if template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": _CONTENT}], add_generation_prompt=True,
                                                 tokenize=False)
            before, _, after = text.partition(_CONTENT)
        _FRAMES[tokenizer] = (template, controls, before, after)
    return _FRAMES[tokenizer][1:]


def encode_prompt(tokenizer, prompt):
    """Token ids of a chat-templated prompt. Control-token text typed inside the user's part (a question that
    mentions "<|im_end|>") is encoded as the characters it is, so it cannot close the turn or open another;
    the template's own markers stay control tokens. A prompt without such text encodes as one tokenizer call."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    controls, before, after = _chat_frame(tokenizer)
    if not before or not prompt.startswith(before) or after not in prompt[len(before):]:
        return ids  # not a chat turn of this template: encoded as given
    end = prompt.rindex(after)
    user, rest = prompt[len(before):end], prompt[end + len(after):]
    if not any(c in user or c in rest for c in controls):
        return ids

    def encode(text, split):
        return tokenizer(text, add_special_tokens=False, split_special_tokens=split)["input_ids"] if text else []

    return encode(before, False) + encode(user, True) + encode(after, False) + encode(rest, True)
