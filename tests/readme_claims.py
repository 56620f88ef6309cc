"""The numbers README.md quotes from ``make demo``, checked against the demo's
own printout (issue 22, point 11: a stale README fails the tests).

Each function takes the printout of one part of the demo and returns the
README's claims that disagree with it, as readable lines ([] = all agree). It
also fails when the README no longer quotes the numbers at all, so that a
rewrite cannot silently drop the check.
"""

from __future__ import annotations

import ast
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme() -> str:
    """README.md with its line breaks folded (claims wrap across lines)."""
    return " ".join(README.read_text().split())


def _readme_lines() -> list[str]:
    return README.read_text().splitlines()


# ---------------------------------------------------------------- photos

# "    gradcam     243 bull mastiff      0.57      0.60      0.21"
_PHOTO_ROW = re.compile(
    r"^    (\w+)\s+(\d+ .+?)\s+(\d\.\d\d|-)((?:\s+(?:\d\.\d\d|-))+)$"
)
# "| both.png | predicted: 243 bull mastiff | 0.57 | **0.60** / 0.21 |"
_README_PHOTO = re.compile(
    r"^\| (\S+) \| (predicted|forced): (.+?) \| (\S+) \| (.+?) \|$"
)


def _printed_photo_rows(printout: str) -> list[tuple[str, str, str, str, list[str]]]:
    """(image stem, run, explains, p, focus per subject) per printed row."""
    rows, image = [], None
    for line in printout.splitlines():
        head = re.fullmatch(r"  (\S+\.\w+)", line)
        if head:
            image = pathlib.Path(head.group(1)).stem
            continue
        row = _PHOTO_ROW.match(line)
        if row and image:
            run, what, p, focus = row.groups()
            rows.append((image, run, what, p, focus.split()))
    return rows


def photo_claims(printout: str) -> list[str]:
    """README's photo table rows: "predicted" is the demo's ``gradcam`` run,
    "forced" one of its ``<subject>_gradcam`` runs."""
    printed = _printed_photo_rows(printout)
    wrong, checked = [], 0
    for line in _readme_lines():
        quoted = _README_PHOTO.match(line)
        if not quoted:
            continue
        image, kind, what, p, focus = quoted.groups()
        checked += 1
        runs = [
            row
            for row in printed
            if row[0] == pathlib.Path(image).stem
            and row[2] == what
            and (row[1] == "gradcam") == (kind == "predicted")
            and (kind == "predicted" or row[1].endswith("_gradcam"))
        ]
        cells = [c.strip().strip("*") for c in focus.split("/")]
        if not runs:
            wrong.append(f"README row not in the printout: {line}")
        elif (runs[0][3], runs[0][4]) != (p, cells):
            wrong.append(f"README: {line} -- printout: {runs[0]}")
    if checked < 4:
        wrong.append(f"README quotes {checked} photo rows, expected the 4 of the demo")
    return wrong


# ---------------------------------------------------------------- shortcut

# "  shortcut       0.500   1.000     0.000   0.130   0.140     0.120"
_SHORTCUT_ROW = re.compile(r"^  (shortcut|control)((?:\s+(?:[\d.]+|-)){6})$")
_README_SHORTCUT = re.compile(
    r"^\| (shortcut|control) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| \*\*([\d.]+)\*\* \|$"
)


def shortcut_claims(printout: str) -> list[str]:
    printed = {}
    for line in printout.splitlines():
        row = _SHORTCUT_ROW.match(line)
        if row:
            values = row.group(2).split()
            # accuracy, agree, disagree, mean focus (then focus by agreement)
            printed[row.group(1)] = values[:4]  # quoted as printed
    wrong, checked = [], 0
    for line in _readme_lines():
        quoted = _README_SHORTCUT.match(line)
        if quoted:
            checked += 1
            kind, *values = quoted.groups()
            if printed.get(kind) != values:
                wrong.append(f"README: {line} -- printout: {printed.get(kind)}")
    if checked != 2:
        wrong.append(
            f"README quotes {checked} model rows, expected shortcut and control"
        )
    low = re.search(r"focus < 0\.3: (\d+)% of the shortcut model's samples", printout)
    claim = re.search(
        r"(\d+)% of the shortcut model's samples have focus < 0\.3", readme()
    )
    if not low or not claim or low.group(1) != claim.group(1):
        wrong.append(
            f"README's low-focus share {claim and claim.group(1)}% -- printout "
            f"{low and low.group(1)}%"
        )
    return wrong


# ---------------------------------------------------------------- clever hans

# "  circle/0    115 samples, true classes {'circle': 64, 'cross': 51}, peak at ..."
_CLUSTER = re.compile(
    r"^  (\S+)\s+(\d+) samples, true classes (\{.*?\}), peak .*corner$"
)


def clever_hans_claims(printout: str) -> list[str]:
    text, wrong = readme(), []
    corners = [m.groups() for m in map(_CLUSTER.match, printout.splitlines()) if m]
    if not corners:
        wrong.append("the printout names no corner cluster")
    for name, size, mix in corners:
        counts = ast.literal_eval(mix)
        quoted = f"{size}-sample cluster"
        classes = "true classes: " + ", ".join(f"{n} {c}" for c, n in counts.items())
        for claim in (quoted, classes):
            if claim not in text:
                wrong.append(f"README lacks {claim!r} (cluster {name} of the printout)")
    agree = re.search(r"without the mark\): ([\d.]+)% agreement", printout)
    claims = re.findall(
        r"drawn again without the mark\) on ([\d.]+)% of the samples", text
    )
    claims += re.findall(r"\(([\d.]+)% agreement with the same images drawn", text)
    if not agree or len(claims) != 2 or set(claims) != {agree.group(1)}:
        wrong.append(
            f"README's agreement {claims} -- printout {agree and agree.group(1)}%"
        )
    return wrong
