"""The trajectory viewer on the shipped example rollout: terminal colours and block marks, and an HTML page
whose structure carries every token with its step (checked with a real HTML parser), plus its errors."""
import html.parser
import json

import pytest

from t3d.common.paths import CHECKOUT
from t3d.decode.view import load_trajectory, main, render_html, render_terminal, segments
from t3d.model.checkpoint import load_tokenizer

EXAMPLE = CHECKOUT / "data" / "rollout_example_sdar-tiny.json"


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.steps, self.blocks, self.tags, self.open = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag not in ("meta", "input"):
            self.open.append(tag)
        if attrs.get("class") == "tok":
            self.steps.append(int(attrs["data-step"]))
        if attrs.get("class") == "block":
            self.blocks.append(int(attrs["data-block"]))

    def handle_endtag(self, tag):
        assert self.open.pop() == tag  # well nested


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(CHECKOUT / "models" / "sdar-tiny"))


def test_html_page_holds_every_token_with_its_step_in_absolute_blocks(tokenizer):
    item = json.loads(EXAMPLE.read_text())[1]
    trajectory = load_trajectory(EXAMPLE, item=1)
    assert trajectory["response_ids"] == item["response_ids"][0] and trajectory["block_size"] == 4
    page = Page()
    page.feed(render_html(trajectory, tokenizer))
    assert page.open == [] and page.tags[:2] == ["html", "head"] and "script" in page.tags and "input" in page.tags
    assert page.steps == item["step_map"][0]
    from t3d.tasks.prompting import encode_prompt

    first = len(encode_prompt(tokenizer, item["prompt"])) // 4  # the prompt's last block is the first one shown
    n = len(item["response_ids"][0])
    assert page.blocks == list(range(first, (len(encode_prompt(tokenizer, item["prompt"])) + n - 1) // 4 + 1))


def test_terminal_marks_every_block_and_colours_every_token(tokenizer):
    trajectory = load_trajectory(EXAMPLE, item=0)
    text = render_terminal(trajectory, tokenizer).splitlines()[-1]
    assert text.count("\x1b[2m|") == len(segments(trajectory, tokenizer))
    assert text.count("\x1b[38;5;") == len(trajectory["response_ids"])


def test_cli_writes_the_page_and_refuses_a_missing_item_with_one_line(tmp_path, capsys):
    assert main([str(EXAMPLE), "--item", "2", "--html", str(tmp_path / "t.html"), "--tokenizer", "models/sdar-tiny"]) == 0
    assert (tmp_path / "t.html").read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    assert main([str(EXAMPLE), "--item", "99", "--tokenizer", "models/sdar-tiny"]) == 2
    err = capsys.readouterr().err
    assert err == f"t3d-view: error: {EXAMPLE}: no item 99 (it holds 8)\n"


def test_the_viewer_reads_eval_items(tokenizer, tmp_path):
    from t3d.commands import evaluate

    evaluate([f"experiment.output_dir={tmp_path}", "evaluation.max_items=2", "rollout.max_token=24"])
    (items,) = (tmp_path / "eval" / "results").rglob("items.jsonl")
    row = json.loads(items.read_text().splitlines()[1])
    trajectory = load_trajectory(items, item=1)
    assert trajectory["response_ids"] == row["response_ids"] and trajectory["step_map"] == row["step_map"]
    page = Page()
    page.feed(render_html(trajectory, tokenizer))
    assert page.steps == row["step_map"]


def test_newline_tokens_show_as_marks_in_both_views(tokenizer):
    """A raw newline in a token was drawn as nothing in the HTML page and broke its block's box over lines (seen in
    a browser: tests/test_view_browser.py); both views show it as ⏎, a carriage return as ␍."""
    ids = tokenizer.encode("a.\nb\r\n", add_special_tokens=False)
    trajectory = {"prompt": "", "response_ids": ids, "step_map": list(range(1, len(ids) + 1)), "block_size": 4,
                  "source": "lines"}
    body = render_html(trajectory, tokenizer).split('<div id="response">')[1].split("</div>")[0]
    assert "\n" not in body and "\r" not in body and body.count("⏎") == 2 and body.count("␍") == 1
    terminal = render_terminal(trajectory, tokenizer).split("\n", 2)[2]
    assert "\n" not in terminal and "\r" not in terminal and terminal.count("⏎") == 2 and terminal.count("␍") == 1
