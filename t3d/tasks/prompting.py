"""One prompt builder for rollout, training and evaluation, so their prompts are byte-identical.

The user message follows the reference's per-task instructions; the chat template comes from the
tokenizer (`apply_chat_template(..., add_generation_prompt=True)`), so the prompt ends with the
assistant header *including* its newline, exactly as training concatenates prompt + response.
"""
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


def encode_prompt(tokenizer, prompt):
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
