"""The report's document: content blocks rendered as Markdown and as a PDF, page previews, and ``reproscope note``.

A report (and a hand-written note) is a list of blocks: ``("title", text)``, ``("h", text)``, ``("p",
text)``, ``("table", header, rows)``, ``("img", path, caption)``, ``("code", lines)``. The same list feeds
:func:`to_markdown` and :func:`to_pdf` (fpdf2, DejaVu fonts from matplotlib's own folder), so the two never
disagree; :func:`markdown_blocks` reads a note's Markdown back into blocks; :func:`write_previews` renders
each PDF page as a PNG (pypdfium2). Layout: a heading, a figure with its caption and a short code block
never split across pages; paragraphs break at spaces, a code span that does not fit moves whole.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError

MAX_PAGES = 3
NL = {"new_x": "LMARGIN", "new_y": "NEXT"}  # fpdf2: every paragraph starts at the left margin on a new line



def to_markdown(blocks: list[tuple], out: Path) -> str:
    lines = []
    for b in blocks:
        kind = b[0]
        if kind == "title":
            lines += [f"# {b[1]}", ""]
        elif kind == "h":
            lines += [f"## {b[1]}", ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in b[2]]
            lines.append("")
        elif kind == "img" and b[1] is not None:
            lines += [f"![{b[2]}]({Path(b[1]).relative_to(out)})", "", f"*{b[2]}*", ""]
        elif kind == "code":
            lines += ["```", *b[1], "```", ""]
    return "\n".join(lines)


def _fonts(pdf) -> tuple[str, str]:
    """Register DejaVu Sans and Sans Mono from matplotlib's own font folder (a dependency, so nothing is
    downloaded): Unicode text (±, →, ≤, α, β, γ) prints as such. Returns (sans, mono) family names."""
    import matplotlib
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for family, stem in (("DejaVu", "DejaVuSans"), ("DejaVuMono", "DejaVuSansMono")):
        for style, suffix in (("", ""), ("B", "-Bold"), ("I", "-Oblique")):
            pdf.add_font(family, style, str(ttf / f"{stem}{suffix}.ttf"))
    return "DejaVu", "DejaVuMono"


def wrap_command(line: str, max_chars: int, indent: int = 4) -> list[str]:
    """A code line too long for ``max_chars`` characters, wrapped the way a shell reader expects: only
    at spaces, before an option (``-x``/``--key``) where possible so that an option stays with its
    value, each broken line ending in `` \\`` and continued with ``indent`` spaces. A single word
    longer than the line is kept whole (the caller shrinks the font for it). Lines that fit come back
    unchanged."""
    if len(line) <= max_chars:
        return [line]
    lead = len(line) - len(line.lstrip())
    words = line.split()
    pieces: list[str] = []  # options glued to their values: "--set model.x=1"
    for w in words:
        if pieces and not w.startswith("-") and pieces[-1].startswith("-") and " " not in pieces[-1]:
            pieces[-1] += " " + w
        else:
            pieces.append(w)
    out, cur = [], " " * lead + pieces[0]
    for p in pieces[1:]:
        if len(cur) + 1 + len(p) + 2 <= max_chars:
            cur += " " + p
        else:
            out.append(cur + " \\")
            cur = " " * (lead + indent) + p
    return out + [cur]


def _block_height(pdf, b: tuple, width: float, font_size: float, fig_scale: float = 1.0) -> float:
    """A rough height (mm) of the first part of block ``b``: what must fit below a heading. A short code
    block (``KEEP_CODE_LINES`` lines or fewer) counts whole: a command stays with its section."""
    if b[0] == "img" and b[1] is not None:
        from PIL import Image
        with Image.open(b[1]) as im:
            w, h = im.size
        return width * _img_frac(w / h) * fig_scale * h / w + 6
    if b[0] == "code" and len(b[1]) <= KEEP_CODE_LINES:
        return _code_height(pdf, b[1], width, font_size)
    return font_size * 0.45 * 3  # three lines of text or table rows


def _img_frac(aspect: float) -> float:
    """The share of the text width a figure of ``aspect`` (width / height) gets: wide multi-panel
    figures the most, so their 7 pt labels print at about 6 pt."""
    return 0.8 if aspect > 2.2 else 0.55


KEEP_CODE_LINES = 12  # a code block this short is never split across pages
SPARSE_LAST_PAGE = 0.6  # a last page filled less than this share is worth trying a tighter layout for
TIGHTEN_TO_SAVE_A_PAGE = 1.0  # points of text size given up, at most, to save a page


def to_pdf(blocks: list[tuple], path: Path, font_size: float = 8.5, max_pages: int | None = MAX_PAGES,
           layout: list | None = None) -> int:
    """Render with fpdf2; returns the page count.

    Text is set left-aligned (monospace is never justified) in DejaVu Sans / Sans Mono; long commands
    wrap at argument boundaries (``wrap_command``); a heading moves to the next page when the start of
    what follows it (three lines, a whole figure, a whole short code block) would not fit below it, and
    a figure never leaves its caption behind. Laid out to the content: tighter layouts (text 0.5 pt
    smaller and figures 7.5 % smaller per step, ``_tightenings``) are tried where the result runs past
    ``max_pages`` (down to 6.5 pt) or its last page is less than ``SPARSE_LAST_PAGE`` full (down to
    ``TIGHTEN_TO_SAVE_A_PAGE`` pt smaller), and the first that fits with one page fewer is kept.
    ``layout``, if given, receives one ``(kind, page, y_mm)`` per block, where the block starts."""
    chosen = None
    for size, scale in _tightenings(font_size):
        lay: list = []
        pdf, fill = _render(blocks, size, scale, lay)
        fits = max_pages is None or pdf.pages_count <= max_pages
        if chosen is None:
            chosen, first_fill = (pdf, lay, fits), fill
        elif fits and (not chosen[2] or pdf.pages_count < chosen[0].pages_count):
            chosen = (pdf, lay, fits)
            break
        elif not chosen[2]:  # nothing fits yet: keep the tightest
            chosen = (pdf, lay, fits)
        if chosen[2] and (chosen[0].pages_count == 1 or first_fill >= SPARSE_LAST_PAGE
                          or font_size - size >= TIGHTEN_TO_SAVE_A_PAGE):
            break
    pdf, lay, _ = chosen
    if layout is not None:
        layout[:] = lay
    pdf.output(str(path))
    return pdf.pages_count


def _tightenings(font_size: float) -> list[tuple[float, float]]:
    """(text size, figure scale) from the given layout to the tightest readable one (6.5 pt)."""
    steps = max(0, int((font_size - 6.5) / 0.5 + 1e-9))
    return [(font_size - 0.5 * k, 1.0 - 0.075 * k) for k in range(steps + 1)]


def _render(blocks: list[tuple], font_size: float, fig_scale: float, layout: list):
    """One layout of ``blocks``: the FPDF document and how full its last page is (0..1)."""
    from fpdf import FPDF
    pdf = FPDF(format="A4")
    fonts = _fonts(pdf)
    pdf.set_margins(12, 10, 12)
    pdf.set_auto_page_break(True, margin=10)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin
    for i, b in enumerate(blocks):
        kind = b[0]
        if kind in ("title", "h") and i + 1 < len(blocks):  # keep a heading with what follows it
            need = 7 + _block_height(pdf, blocks[i + 1], width, font_size, fig_scale)
            if pdf.get_y() + need > pdf.page_break_trigger:
                pdf.add_page()
        whole = _whole_height(pdf, b, width, font_size, fig_scale)  # a figure with its caption, a short code block
        if whole and pdf.get_y() + whole > pdf.page_break_trigger and whole < pdf.page_break_trigger - pdf.t_margin:
            pdf.add_page()
        layout.append((kind, pdf.page, pdf.get_y()))
        if kind == "title":
            pdf.set_font(fonts[0], "B", font_size + 5)
            pdf.multi_cell(width, 7, b[1], align="L", **NL)
        elif kind == "h":
            pdf.ln(1.5)
            pdf.set_font(fonts[0], "B", font_size + 2)
            pdf.multi_cell(width, 5.5, b[1], align="L", **NL)
        elif kind == "p":
            pdf.ln(0.8)
            _draw_runs(pdf, fonts, font_size, paragraph_runs(b[1], len(b) > 2 and b[2]))
        elif kind == "table":
            _draw_table(pdf, fonts[0], font_size - 1, b[1], b[2], width)
        elif kind == "img" and b[1] is not None:
            _draw_image(pdf, fonts[0], font_size, b[1], b[2], width, fig_scale)
        elif kind == "code":
            _draw_code(pdf, fonts[1], font_size, b[1], width)
    top, bottom = pdf.t_margin, pdf.page_break_trigger
    return pdf, (pdf.get_y() - top) / (bottom - top)


def paragraph_runs(text: str, marked: bool = False) -> list[tuple[str, str]]:
    """A paragraph as ``(style, text)`` runs; style holds ``B`` (bold), ``I`` (italic), ``M`` (monospace).
    ``marked`` text is ``markdown_blocks``' paragraph format: ``**`` toggles bold, ``__`` italic, a
    backtick monospace, and a backslash makes the next marker (or backslash) literal. Plain text (the
    report's own) has only its backtick spans set in monospace."""
    if not marked:
        parts = text.split("`")
        if len(parts) % 2 == 0:  # an unpaired backtick: print as written
            return [("", text)]
        return [("M" if i % 2 else "", p) for i, p in enumerate(parts) if p]
    runs, cur, style, i = [], [], set(), 0
    toggles = {"**": "B", "__": "I", "`": "M"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            lit = text[i + 1:i + 3] if text[i + 1:i + 3] in ("**", "__", "--", "~~") else text[i + 1]
            cur.append(lit)
            i += 1 + len(lit)
            continue
        marker = text[i:i + 2] if text[i:i + 2] in toggles else text[i] if text[i] == "`" else None
        if marker is None:
            cur.append(text[i])
            i += 1
            continue
        if cur:
            runs.append(("".join(sorted(style)), "".join(cur)))
            cur = []
        style ^= {toggles[marker]}
        i += len(marker)
    if cur:
        runs.append(("".join(sorted(style)), "".join(cur)))
    return runs


BREAK_AFTER = "/._"  # where a word wider than a whole line may be broken: paths, dotted keys, snake_case


def paragraph_lines(runs: list[tuple[str, str]], width: float, measure) -> list[list[tuple[str, str]]]:
    """The lines of a left-aligned paragraph of ``(style, text)`` runs (``paragraph_runs``) in ``width``,
    each line as its runs. Lines break at spaces (and at a newline) only: a word, which may span runs
    (a code span and the comma after it are one), goes whole to the next line when it does not fit what is left of
    this one; a word wider than a whole line is broken only after ``/``, ``.`` or ``_`` (between
    characters only where a piece between those is itself wider than a line). ``measure(style, text)``
    is the width of ``text`` in ``style``'s font, in ``width``'s unit. Spaces at a break are dropped."""
    import re
    lines: list[list[tuple[str, str]]] = []
    line: list[tuple[str, str]] = []
    x, space = 0.0, None  # the space before the next word, as (style, text)

    def width_of(pieces):
        return sum(measure(st, t) for st, t in pieces)

    def place(pieces, w):
        nonlocal x
        line.extend(pieces)
        x += w

    def new_line():
        nonlocal line, x
        lines.append(line)
        line, x = [], 0.0

    def set_word(word):
        nonlocal space
        gap = measure(*space) if space and line else 0.0
        w = width_of(word)
        if x + gap + w <= width or (not line and w <= width):
            if gap:
                place([space], gap)
            place(word, w)
        elif w <= width:
            new_line()
            place(word, w)
        else:
            for chunk in _word_chunks(word, width, measure):
                cw = width_of(chunk)
                if line and x + gap + cw > width:
                    new_line()
                    gap = 0.0
                if gap:
                    place([space], gap)
                place(chunk, cw)
                gap = 0.0
        space = None

    word: list[tuple[str, str]] = []
    for style, text in runs:
        for part in re.split(r"( +|\n)", text):
            if not part:
                continue
            if part[0] not in " \n":
                word.append((style, part))
                continue
            if word:
                set_word(word)
                word = []
            if part == "\n":
                new_line()
                space = None
            else:
                space = (space[0], space[1] + part) if space else (style, part)
    if word:
        set_word(word)
    if line:
        lines.append(line)
    return [_merged(ln) for ln in lines]


def _word_chunks(word: list[tuple[str, str]], width: float, measure) -> list[list[tuple[str, str]]]:
    """``word``'s pieces between the points where it may be broken: after each ``BREAK_AFTER`` character;
    a piece wider than ``width`` is broken into characters."""
    chunks, cur = [], []
    for style, text in word:
        start = 0
        for i, ch in enumerate(text):
            if ch in BREAK_AFTER:
                cur.append((style, text[start:i + 1]))
                chunks.append(cur)
                cur, start = [], i + 1
        if start < len(text):
            cur.append((style, text[start:]))
    if cur:
        chunks.append(cur)
    out = []
    for chunk in chunks:
        if sum(measure(st, t) for st, t in chunk) <= width:
            out.append(chunk)
        else:
            out += [[(st, ch)] for st, t in chunk for ch in t]
    return out


def _merged(line: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Adjacent runs of one style as one."""
    out: list[tuple[str, str]] = []
    for style, text in line:
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + text)
        else:
            out.append((style, text))
    return out


def _draw_runs(pdf, fonts: tuple[str, str], size: float, runs: list[tuple[str, str]]) -> None:
    """A left-aligned paragraph across the text width (inset by the cell margin, as a ``multi_cell``'s
    text is), each run in its font (``M``: DejaVu Sans Mono), broken into lines by ``paragraph_lines``:
    a code span or path is never split mid-word."""
    h = size * 0.45

    def font(style):
        pdf.set_font(fonts[1] if "M" in style else fonts[0], style.replace("M", ""), size)

    def measure(style, text):
        font(style)
        return pdf.get_string_width(text)

    inset = pdf.c_margin
    lines = paragraph_lines(runs, pdf.w - pdf.l_margin - pdf.r_margin - 2 * inset, measure)
    pdf.c_margin = 0  # each run's cell exactly as wide as its text
    try:
        for line in lines:
            if pdf.get_y() + h > pdf.page_break_trigger:
                pdf.add_page()
            pdf.set_x(pdf.l_margin + inset)
            for style, text in line:
                font(style)
                pdf.cell(pdf.get_string_width(text), h, text)
            pdf.ln(h)
    finally:
        pdf.c_margin = inset
    if not lines:
        pdf.ln(h)


def _draw_image(pdf, sans: str, font_size: float, img, caption: str, width: float, scale: float) -> None:
    """A figure centred, with a gap above (its white box never covers a table border), and its caption."""
    from PIL import Image
    with Image.open(img) as im:
        w = width * _img_frac(im.size[0] / im.size[1]) * scale
    pdf.ln(1.2)
    pdf.image(str(img), w=w, x=pdf.l_margin + (width - w) / 2)
    pdf.set_font(sans, "I", font_size - 1)
    pdf.multi_cell(width, font_size * 0.42, caption, align="L", **NL)


def _draw_table(pdf, sans: str, size: float, header: list, rows: list, width: float) -> None:
    """A table whose columns are at least as wide as their longest word (no word is split), the rest
    of the width shared by how much text each column holds; the font shrinks (to 5.5 pt) only where
    the longest words together are wider than the page."""
    from fpdf.fonts import FontFace
    padding = 0.8
    while True:
        pdf.set_font(sans, "", size)
        widths, whole = col_widths(pdf, [header, *rows], width, padding)
        if whole or size <= 5.5:
            break
        size -= 0.5
    with pdf.table(headings_style=FontFace(emphasis="BOLD"), line_height=(size + 1) * 0.45, text_align="LEFT",
                   padding=padding, col_widths=widths) as t:
        for row in [header, *rows]:
            r = t.row()
            for c in row:
                r.cell(str(c))


def col_widths(pdf, rows: list[list], width: float, padding: float) -> tuple[tuple[float, ...], bool]:
    """Column widths (mm, summing to ``width``) in the current font: each column at least its longest
    word in bold (the header row is bold) plus padding; what is left goes to the columns whose text
    is longer than that, in proportion to the excess (a column never gets more than its longest
    cell needs, unless every column has all it needs; a column that needs little more gets it first,
    then the rest is shared equally). The flag says whether every word fits whole; where the longest
    words together are wider than ``width``, the widths are in proportion to them."""
    family, size = pdf.font_family, pdf.font_size_pt
    pdf.set_font(family, "B", size)
    extra = 2 * padding + 0.6  # both paddings, the border line, rounding

    def longest(cells, split):
        return max(max((pdf.get_string_width(w) for w in (str(c).split() if split else [str(c)])), default=0)
                   for c in cells) + extra
    cols = list(zip(*rows))
    need = [longest(c, True) for c in cols]
    want = [max(n, longest(c, False)) for n, c in zip(need, cols)]
    pdf.set_font(family, "", size)
    if sum(need) > width:
        return tuple(n * width / sum(need) for n in need), False
    if sum(want) <= width:
        return tuple(w + (width - sum(want)) * w / sum(want) for w in want), True
    excess = [w - n for w, n in zip(want, need)]
    widths, free = list(need), width - sum(need)
    for k, i in enumerate(sorted(range(len(cols)), key=lambda i: excess[i])):  # water-filling
        give = min(excess[i], free / (len(cols) - k))
        widths[i] += give
        free -= give
    return tuple(widths), True


def _whole_height(pdf, b: tuple, width: float, font_size: float, fig_scale: float) -> float:
    """The height (mm) of a block that must not split across pages: a figure with its caption, a code
    block of ``KEEP_CODE_LINES`` lines or fewer; 0 for any other block."""
    if b[0] == "img" and b[1] is not None:
        from PIL import Image
        with Image.open(b[1]) as im:
            w = width * _img_frac(im.size[0] / im.size[1]) * fig_scale
            h = w * im.size[1] / im.size[0]
        pdf.set_font("DejaVu", "I", font_size - 1)
        lines = len(pdf.multi_cell(width, font_size * 0.42, b[2], dry_run=True, output="LINES"))
        return 1.2 + h + lines * font_size * 0.42
    if b[0] == "code" and len(b[1]) <= KEEP_CODE_LINES:
        return _code_height(pdf, b[1], width, font_size)
    return 0.0


def _code_height(pdf, lines: list[str], width: float, font_size: float) -> float:
    """The height (mm) of a code block's wrapped lines, and the gap after it."""
    pdf.set_font("DejaVuMono", "", font_size - 2)
    max_chars = int(width / pdf.get_string_width("m"))
    return sum(len(wrap_command(line, max_chars)) for line in lines) * font_size * 0.4 + 1.8


def _draw_code(pdf, mono: str, font_size: float, lines: list[str], width: float) -> None:
    """Monospace lines, long commands wrapped (``wrap_command``); a block longer than ``KEEP_CODE_LINES``
    (a shorter one is kept whole, ``_whole_height``) leaves at least two lines for the next page."""
    size = font_size - 2
    pdf.ln(0.8)  # clear of a table border above
    pdf.set_font(mono, "", size)
    h = font_size * 0.4
    max_chars = int(width / pdf.get_string_width("m"))
    parts = [p for line in lines for p in wrap_command(line, max_chars)]
    room = lambda n: pdf.get_y() + n * h <= pdf.page_break_trigger  # noqa: E731
    for i, part in enumerate(parts):
        if i == len(parts) - 2 and not room(2) and i > 0:
            pdf.add_page()  # no single line alone at the top of a page
        fit = min(size, size * width / max(pdf.get_string_width(part) * 1.01, 1e-6))
        pdf.set_font(mono, "", fit)  # a single word wider than the line: smaller, never split
        pdf.cell(width, h, part, align="L", **NL)
        pdf.set_font(mono, "", size)
    pdf.ln(1.0)  # a gap before whatever follows, another code block included


def markdown_blocks(text: str, base: Path | None = None) -> list[tuple]:
    """The subset of Markdown our notes use -> report blocks: '#' titles and '##'-'####' headings,
    paragraphs, bullets ('- ', '* ', printed as '•') and numbered items, pipe tables, fenced code,
    and a line holding only ``![caption](file.png)`` as the figure itself (``file`` relative to ``base``, the note's folder; a missing file stays as its caption).
    Links become their text. In paragraphs ``**bold**`` and ``*italic*`` are kept, as a third element
    ``True``: the text is then fpdf2 markdown (``**``, ``__``), every other marker escaped so that
    ``--set`` prints as such; headings, tables and captions are flattened to plain text."""
    import re
    figure = re.compile(r"^\s*!\[([^\]]*)\]\(([^)\s]+)\)\s*$")
    bold = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
    italic = re.compile(r"(?<![\w*])\*(\S(?:[^*]*\S)?)\*(?![\w*])")  # not a * b, runs/*

    def unlink(t: str) -> str:
        return re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", t).replace("`", "")  # [text](link) -> text

    def plain(t: str) -> str:
        return italic.sub(r"\1", bold.sub(r"\1", unlink(t)))

    def escaped(t: str) -> str:  # literal text for fpdf2's markdown
        t = t.replace("\\", "\\\\")
        return re.sub(r"(\*\*|__|--|~~)", r"\\\1", t)

    def spans(t: str, pattern, marker: str, inner) -> str:  # each match wrapped in fpdf2's marker
        out, pos = [], 0
        for m in pattern.finditer(t):
            out += [inner(t[pos:m.start()]), marker, inner(m.group(1)), marker]
            pos = m.end()
        return "".join(out + [inner(t[pos:])])

    def marked(t: str) -> str:  # bold outside, italics inside it too: **a *b* c**; `code` in monospace
        codes: list[str] = []  # each code span held aside (a private-use placeholder) while the rest is marked
        t = re.sub(r"`([^`]+)`", lambda m: f"\ue000{codes.append(m.group(1)) or len(codes) - 1}\ue001", t)
        t = spans(unlink(t), bold, "**", lambda u: spans(u, italic, "__", escaped))
        return re.sub("\ue000(\\d+)\ue001", lambda m: "`" + escaped(codes[int(m.group(1))]) + "`", t)
    blocks, para, table, code = [], [], [], None
    lines = text.splitlines()

    def flush():
        if para:
            blocks.append(("p", marked(" ".join(para)), True))
            para.clear()
        if table:
            rows = [[plain(c.strip()).replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip().strip("|"))]
                    for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            for r in rows[1:]:
                if len(r) != len(rows[0]):
                    raise ValueError(f"a table row has {len(r)} cells where its header has {len(rows[0])} "
                                     f"(write a | inside a cell as \\|): | {' | '.join(r)} |")
            blocks.append(("table", rows[0], rows[1:]))
            table.clear()
    for line in lines:
        if code is not None:
            if line.startswith("```"):
                blocks.append(("code", code))
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            flush()
            code = []
        elif line.startswith("# "):
            flush()
            blocks.append(("title", plain(line[2:])))
        elif line.startswith(("## ", "### ", "#### ")):
            flush()
            blocks.append(("h", plain(line.lstrip("#").strip())))
        elif line.startswith("|"):
            if para:
                flush()
            table.append(line)
        elif not line.strip():
            flush()
        elif (fig := figure.match(line)) and base is not None and (base / fig.group(2)).is_file():
            flush()
            blocks.append(("img", base / fig.group(2), plain(fig.group(1))))
        elif line.startswith(("- ", "* ")):
            flush()
            para.append("• " + line[2:].strip())
        elif re.match(r"\d+[.)] ", line):  # a numbered item starts its own paragraph, as a bullet does
            flush()
            para.append(line.strip())
        else:
            if table:
                flush()
            para.append(line.strip())
    flush()
    return blocks


def note_to_pdf(md_path: str) -> int:
    """`reproscope note FILE.md`: the hand-written reproduction note as FILE.pdf, with the report's renderer."""
    src = Path(md_path)
    if not src.exists():
        raise ConfigError(f"{src}: no such note")
    out = src.with_suffix(".pdf")
    try:
        blocks = markdown_blocks(src.read_text(), base=src.parent)
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None
    pages = to_pdf(blocks, out, max_pages=None)
    previews = write_previews(out, src.stem) if any(out.parent.glob(f"{src.stem}-page*.png")) else None
    print(f"{out} ({pages} pages)" + (f"; page previews {src.stem}-page1.png ... renewed" if previews else ""))
    return 0


PREVIEW_DPI = 150


def write_previews(pdf_path: Path, stem: str = "report") -> list[Path] | None:
    """``<stem>-page1.png``, ... beside ``pdf_path``, one per page (pypdfium2, ``PREVIEW_DPI`` dpi, 256
    colours): the pages for a machine without a PDF viewer. Previews of pages the PDF no longer has are
    removed. Returns the files, or None (and removes every old preview) where pypdfium2 is missing."""
    import re
    folder = pdf_path.parent
    old = {f for f in folder.glob(f"{stem}-page*.png") if re.fullmatch(rf"{re.escape(stem)}-page\d+\.png", f.name)}
    try:
        import pypdfium2 as pdfium
    except ImportError:
        made = None
    else:
        from PIL import Image
        made = []
        doc = pdfium.PdfDocument(str(pdf_path))
        try:
            for i, page in enumerate(doc, 1):
                image = page.render(scale=PREVIEW_DPI / 72).to_pil().convert("RGB")
                made.append(folder / f"{stem}-page{i}.png")
                image.quantize(256, method=Image.Quantize.FASTOCTREE).save(made[-1], optimize=True)
        finally:
            doc.close()
    for f in old - set(made or []):
        f.unlink(missing_ok=True)
    return made
