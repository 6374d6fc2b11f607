"""Render the CLI as a new user sees it at 80 columns into PNGs under docs/cli/, for the README.

Each command runs in-process (click's CliRunner, ``COLUMNS=80``) against a copy of the shipped registry,
so registry.db is never written; its text is drawn in a monospace font (DejaVu Sans Mono, found with
``fc-match``). The pictures the commands write (a contact sheet, a captioned eval grid, a loss curve with
energy histograms) are copied beside them. A short ``concept add`` (150 classifier iterations, about 1 min
on 2 idle CPU cores) gives a version with a recorded loss curve, which the shipped ones predate, and with a
held-out accuracy low enough to be warned about; ``concept eval`` trains its judge once (a few minutes)
unless ~/.cache/conceptlib/judges has it.

Usage: .venv/bin/python scripts/screenshots.py [--skip-eval]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from conceptlib.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "cli"
WIDTH = 80
FONT_SIZE = 14
BACKGROUND, FOREGROUND, PROMPT = (24, 26, 33), (222, 222, 222), (120, 200, 120)


def monospace() -> ImageFont.FreeTypeFont:
    found = subprocess.run(["fc-match", "-f", "%{file}", "DejaVu Sans Mono"], capture_output=True, text=True)
    path = found.stdout.strip() if found.returncode == 0 else ""
    if not path.endswith((".ttf", ".otf")):
        raise SystemExit("no monospace font: install fonts-dejavu-core (fc-match 'DejaVu Sans Mono')")
    return ImageFont.truetype(path, FONT_SIZE)


def terminal_png(command: str, text: str, path: Path, face: ImageFont.FreeTypeFont) -> None:
    """``$ command`` and its output on an 80-column terminal, which wraps a longer line where it reaches the edge."""
    lines = [chunk for line in [f"$ {command}", *text.rstrip("\n").splitlines()]
             for chunk in ([line[i : i + WIDTH] for i in range(0, len(line), WIDTH)] or [""])]
    cell_w = face.getlength("M")
    cell_h = FONT_SIZE + 4
    image = Image.new("RGB", (int(cell_w * WIDTH) + 24, cell_h * len(lines) + 20), BACKGROUND)
    draw = ImageDraw.Draw(image)
    prompt = len(f"$ {command}") // WIDTH + 1
    for row, line in enumerate(lines):
        draw.text((12, 10 + row * cell_h), line, font=face, fill=PROMPT if row < prompt else FOREGROUND)
    # three colours, anti-aliased: a palette of 32 keeps them in a third of the bytes
    image.quantize(32).save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT)} ({len(lines)} lines)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-eval", action="store_true", help="Leave out the eval grid (judge training).")
    args = parser.parse_args()
    face = monospace()
    DOCS.mkdir(parents=True, exist_ok=True)
    os.environ["COLUMNS"] = str(WIDTH)
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        registry = work / "registry.db"
        shutil.copyfile(ROOT / "registry.db", registry)

        def shot(name: str, *arguments: str, shown: str | None = None) -> str:
            result = runner.invoke(cli, ["--registry", str(registry), *arguments], catch_exceptions=False)
            command = shown or "concept " + " ".join(a if " " not in a else f'"{a}"' for a in arguments)
            if name:
                terminal_png(command, result.output, DOCS / f"{name}.png", face)
            return result.output

        os.chdir(work)
        shot("overview")
        shot("sources", "sources")
        shot("list", "list")
        shot("", "source", "sample", "scenes", "-n", "24", "--out-dir", "scenes")
        shutil.copyfile(work / "scenes" / "contact.png", DOCS / "contact.png")
        Image.new("RGB", (32, 32), (128, 128, 128)).save(work / "gray.png")
        shot("infer", "infer", "shape", "gray.png", "scenes/scenes_00000.png", "scenes/scenes_00001.png", "--each")
        shot("compose", "compose", "size=0.45 & color=red", "-n", "8", "-o", "out.png")
        shot("error", "compose", "(position=(0.3,0.7) & color=red", "-o", "out.png")
        shot("add", "add", "shape", "--source", "scenes", "--with", "position", "--objective", "classifier",
             "--iterations", "150", "--checkpoint-dir", "checkpoints")
        shot("history", "history", "shape")
        shot("", "show", "shape", "--plot", str(DOCS / "show-plot.png"), "-n", "256")
        if not args.skip_eval:
            shot("eval", "eval", "--protocol", "position & color", "-n", "16", "--inference", "0", "--out-dir", "eval")
            shutil.copyfile(work / "eval" / "position-and-color.png", DOCS / "eval-grid.png")
        os.chdir(ROOT)


if __name__ == "__main__":
    main()
