import io

import numpy as np
from PIL import Image

from tasks.core.files import is_ignored
from tasks.modality.images import decode, to_rgb


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_decode_resizes_to_rgb_uint8():
    data = encode(Image.new("L", (40, 20), 128))
    out = decode(data, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out == 128).all()


def test_palette_cmyk_and_alpha_become_rgb():
    palette = Image.new("P", (8, 8))
    palette.putpalette([255, 0, 0] * 256)
    assert to_rgb(palette).getpixel((0, 0)) == (255, 0, 0)
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 255, 255)
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white


def test_16_bit_greyscale_is_scaled_not_clipped():
    array = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, 0, 0] == 0 and rgb[1, 1, 0] == 255
    assert 100 < rgb[1, 0, 0] < 140  # 2000/4000 of the range, not clipped to 255


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = Image.open(io.BytesIO(encode(image, "JPEG", exif=exif.tobytes())))
    assert to_rgb(rotated).size == (10, 30)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 0, 250))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    out = decode(data, 8)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_hidden_and_system_files_are_ignored(tmp_path):
    assert is_ignored(tmp_path / ".DS_Store")
    assert is_ignored(tmp_path / "Thumbs.db")
    assert not is_ignored(tmp_path / "cat.png")
