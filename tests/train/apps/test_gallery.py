"""Media writers: exact frames back from png/gif at native size, mp4 decodes, page and sheet exist."""

from __future__ import annotations

import numpy as np
import pytest

from patchpack.train.apps.gallery import (
    GalleryItem,
    contact_sheet,
    read_gif,
    write_gallery,
    write_video_files,
)


def _clip(t=3, h=8, w=12):
    rng = np.random.default_rng(0)
    # few distinct colours, so a gif's 256-colour palette holds them exactly
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [30, 60, 200]], np.uint8)
    return palette[rng.integers(0, 4, size=(t, h, w))]


def test_video_files_round_trip(tmp_path):
    pytest.importorskip("av")
    from patchpack.train.data.media_decode import decode_image, decode_video

    clip = _clip()
    files = write_video_files(tmp_path, "v", clip, fps=8)
    assert files.mp4 == "v.mp4"
    assert np.array_equal(read_gif(tmp_path / files.gif), clip)
    strip = decode_image((tmp_path / files.png).read_bytes(), max_pixels=10**6).frames_THWC[0]
    assert np.array_equal(strip, np.concatenate(list(clip), axis=1))  # frames left to right, lossless
    dec = decode_video((tmp_path / files.mp4).read_bytes(), fps=None, stride=1, max_seconds=None, max_frames=None,
                       max_pixels=10**6, max_source_frames=100)
    assert dec.frames_THWC.shape == clip.shape

    image = write_video_files(tmp_path, "i", clip[:1], fps=8)
    assert image.mp4 is None and not (tmp_path / "i.mp4").exists()


def test_contact_sheet_and_gallery(tmp_path):
    from PIL import Image

    a, b = _clip(t=3, h=8, w=12), _clip(t=1, h=16, w=16)
    contact_sheet(tmp_path / "s.png", [a, b], ["clip", "image"], cell=48)
    sheet = np.asarray(Image.open(tmp_path / "s.png"))
    assert sheet.shape[1] >= 3 * 48  # three frames scaled 4x side by side
    with pytest.raises(ValueError, match="one label per video"):
        contact_sheet(tmp_path / "x.png", [a], [])

    files = write_video_files(tmp_path, "a", a, fps=8)
    write_gallery(tmp_path / "index.html", [GalleryItem("a <red> circle", (3, 8, 12), files, ["colour ok"])],
                  title="t")
    page = (tmp_path / "index.html").read_text()
    assert 'src="a.gif"' in page and "a &lt;red&gt; circle" in page and "colour ok" in page


def test_gallery_shows_a_reference_beside_its_sample(tmp_path):
    a, ref = _clip(t=3, h=8, w=12), _clip(t=3, h=8, w=12)
    files = write_video_files(tmp_path, "a", a, fps=8)
    ref_files = write_video_files(tmp_path, "ref_a", ref, fps=8)
    write_gallery(tmp_path / "index.html", [GalleryItem("a red circle", (3, 8, 12), files, ["colour ok"], ref_files),
                                            GalleryItem("plain", (3, 8, 12), files)], title="t")
    page = (tmp_path / "index.html").read_text()
    assert page.count('src="ref_a.gif"') == 1 and "reference" in page and page.count('src="a.gif"') == 2
