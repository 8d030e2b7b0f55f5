"""Writing generated videos for people to look at: mp4, gif, png, a contact sheet, an HTML page.

Generated clips are small (a tiny CPU model makes 32x32 videos), so the files keep the
native size, which the evaluator reads back exactly, and the views scale up: the contact
sheet by integer nearest-neighbour, the HTML page with `image-rendering: pixelated`.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchpack.train.data.media_encode import encode_image, encode_mp4


def write_gif(path: str | Path, frames_THWC: np.ndarray, *, fps: float) -> Path:
    """An endlessly looping gif (PIL). One frame still makes a valid gif."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames_THWC]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(int(round(1000 / fps)), 20), disposal=2)
    return Path(path)


@dataclass
class MediaFiles:
    """The files written for one video, relative to the output directory."""

    png: str  # the frame itself for an image; a strip of all frames for a video
    gif: str
    mp4: str | None = None  # videos only (T > 1)


def write_video_files(out_dir: str | Path, stem: str, frames_THWC: np.ndarray, *, fps: float) -> MediaFiles:
    """`stem`.png, `stem`.gif and (T > 1) `stem`.mp4 in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = frames_THWC.shape[0]
    files = MediaFiles(png=f"{stem}.png", gif=f"{stem}.gif")
    strip = frames_THWC[0] if t == 1 else np.concatenate(list(frames_THWC), axis=1)  # frames left to right
    (out / files.png).write_bytes(encode_image(strip, fmt="png"))
    write_gif(out / files.gif, frames_THWC, fps=fps)
    if t > 1:
        files.mp4 = f"{stem}.mp4"
        (out / files.mp4).write_bytes(encode_mp4(frames_THWC, fps=int(round(fps))))
    return files


def contact_sheet(path: str | Path, videos: Sequence[np.ndarray], labels: Sequence[str], *,
                  cell: int = 96, max_frames: int = 8) -> Path:
    """One row per video: up to `max_frames` evenly spaced frames, each scaled by an integer
    factor to about `cell` pixels on its long side, the label above the row."""
    from PIL import Image, ImageDraw

    if len(videos) != len(labels) or not videos:
        raise ValueError(f"need one label per video and at least one video: {len(videos)} videos, {len(labels)} labels")
    label_h, pad = 14, 4
    rows = []
    for frames in videos:
        t, h, w = frames.shape[:3]
        picks = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
        k = max(1, cell // max(h, w))
        rows.append([np.kron(frames[i], np.ones((k, k, 1), np.uint8)) for i in picks])
    width = max(sum(f.shape[1] + pad for f in row) for row in rows) + pad
    height = sum(row[0].shape[0] + label_h + pad for row in rows) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for row, label in zip(rows, labels):
        draw.text((pad, y), label, fill=(0, 0, 0))
        y += label_h
        x = pad
        for f in row:
            sheet.paste(Image.fromarray(f), (x, y))
            x += f.shape[1] + pad
        y += row[0].shape[0] + pad
    sheet.save(path, format="PNG")
    return Path(path)


@dataclass
class GalleryItem:
    caption: str
    size: tuple[int, int, int]  # (T, H, W) in pixels
    files: MediaFiles
    notes: list[str] = field(default_factory=list)  # e.g. "unseen aspect 1:3", "colour ok"
    reference: MediaFiles | None = None  # a real clip of the same caption and size, shown beside it


def _gif_tag(files: MediaFiles, alt: str, *, width: int, height: int) -> str:
    return f'<img src="{html.escape(files.gif)}" width="{width}" height="{height}" alt="{html.escape(alt)}">'


def write_gallery(path: str | Path, items: Sequence[GalleryItem], *, title: str, intro: str = "",
                  scale: int = 4) -> Path:
    """A self-contained HTML page (no scripts, no external assets) showing each gif, beside its
    item's reference clip when it has one."""
    cards = []
    for it in items:
        t, h, w = it.size
        links = " · ".join(f'<a href="{html.escape(f)}">{kind}</a>'
                           for kind, f in (("mp4", it.files.mp4), ("gif", it.files.gif), ("png", it.files.png)) if f)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in it.notes)
        img = _gif_tag(it.files, it.caption, width=w * scale, height=h * scale)
        if it.reference is not None:  # generated | real, each labelled
            ref = _gif_tag(it.reference, f"reference: {it.caption}", width=w * scale, height=h * scale)
            img = (f'<span class="pair"><span>{img}<br>generated</span><span>{ref}<br>reference</span></span>')
        cards.append(
            f'<figure>{img}<figcaption><b>{html.escape(it.caption)}</b><br>'
            f"{t} frame{'s' if t > 1 else ''} · {h}×{w} px · {links}<ul>{notes}</ul></figcaption></figure>")
    style = ("body{font-family:sans-serif;margin:2em;background:#fafafa}"
             "figure{display:inline-block;vertical-align:top;margin:0 1.5em 1.5em 0;max-width:640px}"
             "img{image-rendering:pixelated;background:#222}figcaption{font-size:13px}"
             ".pair{display:flex;gap:6px;font-size:11px;color:#555;text-align:center}"
             "ul{margin:.3em 0;padding-left:1.2em;color:#555}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
            + "\n".join(cards) + "</body></html>\n")
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def read_gif(path: str | Path) -> np.ndarray:
    """uint8 [T, H, W, 3]: the frames of a gif (for tests and the evaluator)."""
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(Path(path).read_bytes())) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
