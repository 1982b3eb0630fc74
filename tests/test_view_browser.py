"""t3d-view's HTML page in a real browser: Debian's headless chromium loads the page t3d-view writes for the
shipped example rollout, and the tests assert on what the browser built (the DOM after load, the colours it
computed, the slider's replay, the page's console, a screenshot), not on the markup text.

Marker `browser`: deselected by `make test` and `make test-fast`; `make test-browser` installs chromium when it can
and runs only these. Skipped when /usr/bin/chromium is absent.
"""
import html.parser
import json
import re
import subprocess
from pathlib import Path

import pytest

from t3d.common.paths import CHECKOUT
from t3d.decode.view import load_trajectory, main, segments, shown
from t3d.model.checkpoint import load_tokenizer

CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = CHECKOUT / "data" / "rollout_example_sdar-tiny.json"
TOKENIZER = CHECKOUT / "models" / "sdar-tiny"
ITEM = 1

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install --no-install-recommends chromium; `make test-browser` does it as root)"),
]


def chromium(tmp, *args, url):
    """Headless chromium on one URL, a fresh profile each run: (stdout, stderr). --no-sandbox because CI runs as
    root (the page is a local file the test wrote); --enable-logging=stderr puts the page's console there."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    run = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args, url],
        capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout, run.stderr


def console(stderr):
    """What the page wrote to its console, uncaught errors included ('INFO:CONSOLE:<line>] "..."')."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class Dom(html.parser.HTMLParser):
    """The DOM chromium serialized: every element's tag, every token with the block the browser nested it in and
    its text, every block, and the elements that have an id with their text."""

    VOID = ("meta", "input", "link", "br", "img", "hr")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.tokens, self.blocks, self.ids, self.stack = [], [], [], {}, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if attrs.get("id"):
            self.ids[attrs["id"]] = {**attrs, "text": ""}
        if tag in self.VOID:
            return
        classes = (attrs.get("class") or "").split()
        if "tok" in classes:
            block = next((int(a["data-block"]) for _, a in reversed(self.stack) if "data-block" in a), None)
            self.tokens.append({**attrs, "block": block, "classes": classes, "text": ""})
        if "block" in classes:
            self.blocks.append(int(attrs["data-block"]))
        self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data):
        for _, attrs in self.stack:
            if attrs.get("id"):
                self.ids[attrs["id"]]["text"] += data
        if self.stack and "tok" in (self.stack[-1][1].get("class") or "").split():
            self.tokens[-1]["text"] += data


def load(tmp, page):
    """The page loaded in chromium: (its DOM after load, what the page wrote to the console)."""
    out, err = chromium(tmp, "--dump-dom", url=page.as_uri())
    dom = Dom()
    dom.feed(out)
    dom.close()
    assert dom.stack == [] and dom.tags[:3] == ["html", "head", "meta"], out[:500]
    return dom, console(err)


def texts(blocks):
    """Each token's text as the page should show it (line breaks as marks, an empty one as a zero-width space)."""
    return [shown(text) or "\u200b" for _, tokens in blocks for text, _, _ in tokens]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOKENIZER))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tokenizer):
    """t3d-view's page for item 1 of the shipped rollout: (folder, page, trajectory, segments)."""
    tmp = tmp_path_factory.mktemp("view")
    page = tmp / "trajectory.html"
    assert main([str(EXAMPLE), "--item", str(ITEM), "--html", str(page), "--tokenizer", str(TOKENIZER)]) == 0
    trajectory = load_trajectory(EXAMPLE, item=ITEM)
    return tmp, page, trajectory, segments(trajectory, tokenizer)


def test_the_browser_builds_every_token_with_its_step_inside_its_block(rendered):
    tmp, page, trajectory, blocks = rendered
    dom, logged = load(tmp, page)
    assert logged == []  # no script error, nothing on the console
    steps = trajectory["step_map"]
    assert len(dom.tokens) == len(trajectory["response_ids"]) == len(steps)
    assert [int(t["data-step"]) for t in dom.tokens] == steps
    assert [t["title"] for t in dom.tokens] == [f"step {s}" for s in steps]  # the hover text
    # block boundaries: one box per block, consecutive, each holding exactly its own tokens as the browser nested
    # them, and each token's text as decoded (nothing swallowed as markup)
    assert dom.blocks == [index for index, _ in blocks] == list(range(dom.blocks[0], dom.blocks[-1] + 1))
    assert [t["block"] for t in dom.tokens] == [index for index, tokens in blocks for _ in tokens]
    assert [t["text"] for t in dom.tokens] == texts(blocks)
    # opened at the last step: everything decoded, the slider and its readout there
    last = max(steps)
    assert not any("masked" in t["classes"] for t in dom.tokens)
    slider = dom.ids["step"]
    assert (slider["type"], slider["min"], slider["max"], slider["value"]) == ("range", "0", str(last), str(last))
    assert dom.ids["now"]["text"] == str(last)


# Probes for a COPY of the page: an error trap that runs before anything else, and after the page's own script a
# driver that records what the browser computed (colours, where each token and block box was laid out, the visible
# text) and replays the decode with the slider as a user would drag it, all as JSON in an element that --dump-dom
# then shows.
TRAP = """<script>window.__errors = [];
addEventListener("error", e => __errors.push(String(e.message)));</script>"""
DRIVER = """<script>
const probe = {errors: window.__errors, text: document.body.innerText, colours: [], rects: [], boxes: [],
               replay: []};
const toks = [...document.querySelectorAll(".tok")];
for (const tok of toks) {
  const r = tok.getBoundingClientRect();
  probe.colours.push(getComputedStyle(tok).color);
  probe.rects.push({text: tok.textContent, width: r.width, height: r.height});
}
for (const b of document.querySelectorAll(".block")) {
  const s = getComputedStyle(b), r = b.getBoundingClientRect();
  probe.boxes.push({border: s.borderTopStyle + " " + s.borderTopWidth, display: s.display, width: r.width,
                    height: r.height});
}
const input = document.getElementById("step");
for (let step = Number(input.max); step >= Number(input.min); step--) {
  input.value = step;
  input.dispatchEvent(new Event("input"));
  probe.replay.push({step, now: document.getElementById("now").textContent,
                     masked: toks.map(t => t.classList.contains("masked")),
                     colours: toks.map(t => getComputedStyle(t).color)});
}
const out = document.createElement("pre");
out.id = "probe";
out.textContent = JSON.stringify(probe);
document.body.appendChild(out);
</script>"""


def probe(tmp, page):
    """Load a copy of the page with the probes; what they recorded (no error, nothing on the console)."""
    text = page.read_text()
    charset = '<meta charset="utf-8">'
    assert text.count(charset) == 1 and text.count("</body>") == 1
    copy = page.with_name(page.stem + ".probed.html")
    copy.write_text(text.replace(charset, charset + TRAP, 1).replace("</body>", DRIVER + "</body>", 1))
    dom, logged = load(tmp, copy)
    assert "probe" in dom.ids, "the driver did not run"
    recorded = json.loads(dom.ids["probe"]["text"])
    assert recorded["errors"] == [] and logged == []
    return recorded


def one_line_each(recorded):
    """Every token with text laid out wider than its 2px padding (a glyph is drawn) and every block box one line
    tall, as tall as the others."""
    heights = {box["height"] for box in recorded["boxes"]}
    return (all(rect["width"] > 4 for rect in recorded["rects"] if rect["text"] != "\u200b")
            and max(heights) < 1.5 * min(heights))


@pytest.fixture(scope="module")
def probed(rendered):
    tmp, page, _, _ = rendered
    return probe(tmp, page)


def rgb(colour):
    return tuple(int(v) for v in re.fullmatch(r"rgb\((\d+), (\d+), (\d+)\)", colour).groups())


def test_tokens_are_coloured_blue_to_red_by_step_within_each_block_and_blocks_are_boxed(rendered, probed):
    _, _, _, blocks = rendered
    shades = [shade for _, tokens in blocks for _, _, shade in tokens]
    colours = [rgb(c) for c in probed["colours"]]
    assert len(colours) == len(shades) and {0.0, 1.0} <= set(shades)
    for (r, g, b), shade in zip(colours, shades):  # the hue runs from blue (first step) to red (last)
        assert (b > r) if shade < 0.5 else (r > b) if shade > 0.5 else g > max(r, b), (r, g, b, shade)
    assert {c for c, s in zip(colours, shades) if s == 0} == {(20, 20, 184)}  # hsl(240, 80%, 40%)
    assert {c for c, s in zip(colours, shades) if s == 1} == {(184, 20, 20)}  # hsl(0, 80%, 40%)
    hues = iter(colours)
    for _, tokens in blocks:  # within a block, a later step never gets a bluer colour
        ranked = sorted(zip((s for _, s, _ in tokens), (next(hues) for _ in tokens)))
        assert all(a[1][2] >= b[1][2] for a, b in zip(ranked, ranked[1:]))
    assert len(probed["boxes"]) == len(blocks) and one_line_each(probed)
    assert all(box["border"] == "solid 1px" and box["display"] == "inline-block" for box in probed["boxes"])
    assert "(blue first, red last); ⏎ is a newline." in probed["text"]  # the legend is rendered text


def test_the_slider_replays_the_decode_step_by_step(rendered, probed):
    _, _, trajectory, _ = rendered
    steps = trajectory["step_map"]
    last = max(steps)
    assert [r["step"] for r in probed["replay"]] == list(range(last, -1, -1))
    for r in probed["replay"]:
        assert r["now"] == str(r["step"])  # the readout follows the slider
        assert r["masked"] == [s > r["step"] for s in steps]  # exactly the tokens not yet unmasked are greyed
        assert all(rgb(c) == (187, 187, 187) for c, m in zip(r["colours"], r["masked"]) if m)  # #bbb wins over
        assert all(c == c0 for c, c0, m in zip(r["colours"], probed["colours"], r["masked"]) if not m)  # the hue
    assert all(probed["replay"][-1]["masked"]) and not any(probed["replay"][0]["masked"])


def test_a_page_script_error_would_be_caught(tmp_path):
    """The console checks above can fire: chromium logs a page's uncaught error where `console` finds it."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body><p>x</p>"
                    "<script>undefinedThing.go();</script></body></html>")
    _, logged = load(tmp_path, page)
    assert len(logged) == 1 and "Uncaught ReferenceError: undefinedThing is not defined" in logged[0]


def render_one(source, ids):
    """A one-item trajectory of `ids`, one token unmasked per step, written to `source` and rendered by t3d-view
    to <source stem>.html beside it."""
    source.write_text(json.dumps([{"prompt": "", "response_ids": [ids], "step_map": [list(range(1, len(ids) + 1))],
                                   "block_size": 4}]))
    page = source.with_name(f"{source.stem}.html")
    assert main([str(source), "--html", str(page), "--tokenizer", str(TOKENIZER)]) == 0
    return page


def test_markup_in_tokens_and_the_source_name_stays_text(tmp_path, tokenizer):
    """Tokens that spell markup, quotes, a newline, a tab and multi-byte characters, from a file whose name holds
    markup: the browser builds no element from them and shows every token's text."""
    text = 'a < b && c\n"q" \'r\' é <script>window.pwned = 1</script></span></div> \t end'
    ids = tokenizer.encode(text, add_special_tokens=False)
    source = tmp_path / 'odd <b>&"name".json'
    dom, logged = load(tmp_path, render_one(source, ids))
    assert logged == [] and dom.tags.count("script") == dom.tags.count("div") == 1 and "b" not in dom.tags
    trajectory = load_trajectory(source)
    assert [t["text"] for t in dom.tokens] == texts(segments(trajectory, tokenizer))
    assert [int(t["data-step"]) for t in dom.tokens] == list(range(1, len(ids) + 1))


def test_newline_tokens_are_visible_and_keep_their_block_on_one_line(tmp_path, tokenizer):
    """A response over several lines: each newline token shows as ⏎ in its colour, and no block box is broken over
    lines. Raw newlines in the `white-space: pre` tokens were drawn as nothing and stretched their block's box over
    two or three lines (boxes 21, 36 and 51 px tall): the browser's layout showed it, the markup was valid."""
    ids = tokenizer.encode("First add the tens.\n\nThen the ones:\n3+4=7.\n\\boxed{77}\r\n", add_special_tokens=False)
    page = render_one(tmp_path / "lines.json", ids)
    dom, _ = load(tmp_path, page)
    words = [t["text"] for t in dom.tokens]
    assert words.count("⏎") >= 4 and not any("\n" in w or "\r" in w for w in words)
    assert "".join(words).replace("⏎", "\n").replace("␍", "\r") == tokenizer.decode(ids)
    assert one_line_each(probe(tmp_path, page))


def test_the_screenshot_shows_the_coloured_page(rendered):
    from PIL import Image  # matplotlib's dependency

    tmp, page, _, _ = rendered
    shot = tmp / "shot.png"
    chromium(tmp, f"--screenshot={shot}", "--window-size=1000,700", "--hide-scrollbars", url=page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as image:
        assert image.size == (1000, 700)
        counts = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(counts) > 20  # not one colour: text, slider, borders, tokens
    top, background = max(counts)
    assert background == (255, 255, 255) and top < 0.99 * 1000 * 700
    pixels = [c for _, c in counts]
    assert any(b > 120 and b > 2 * r and b > 2 * g for r, g, b in pixels)  # blue tokens drawn
    assert any(r > 120 and r > 2 * b and r > 2 * g for r, g, b in pixels)  # red tokens drawn
