"""What gets graded in a response: the last \\boxed{} answer (math, multiple choice) or the last fenced code block."""
import re
import textwrap

from t3d.common.io import DataError
from t3d.tasks.prompting import DATA_TYPES

NO_ANSWER = "Can not extract the answer!"
NO_CODE = "We can not extract the code in the output. "

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text):
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (brace-matched) or `\\boxed 5` form; None if absent.

    An unterminated last box (a truncated generation) gives None rather than an earlier answer.
    """
    if not isinstance(text, str):
        return None
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    if text.startswith(" ", i):  # "\boxed 5": the argument is the next space-delimited token
        token = text[i:].lstrip(" ").split(None, 1)
        return token[0].rstrip("$.") if token else None
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)


def last_code_block(text):
    """Last complete ```python fenced block (any fenced block if none is tagged python), dedented and
    stripped; None if there is none."""
    blocks = [(lang.strip().lower(), body) for lang, body in _FENCE.findall(text or "")]
    if not blocks:
        return None
    tagged = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    body = tagged[-1] if tagged else blocks[-1][1]
    return textwrap.dedent(body.replace("\r\n", "\n")).strip()


def extract_answer(output, item, data_type):
    """What gets graded for one response (a rollout item's `extracted_output`), or the task's sentinel."""
    if data_type in ("math", "option"):
        boxed = last_boxed(output)
        return NO_ANSWER if boxed is None else boxed
    if data_type == "code":
        text = output or ""
        if item.get("test_method", "function") == "function":
            text = (item.get("prefix") or "") + text
        code = last_code_block(text)
        return NO_CODE if code is None else code
    raise DataError(f"unknown data_type '{data_type}': expected one of {', '.join(DATA_TYPES)}")
