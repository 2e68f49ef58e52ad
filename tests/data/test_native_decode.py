"""Decoding in C++ where it is exact: the manifest names the ordinary JPEG and 8-bit PNG files
(`decoder`), the stream decodes those inside the `tf.data` graph within one grey level of
`images.decode` (PIL), and everything else -- EXIF rotation, CMYK, palette, alpha, 16-bit,
animation, other formats, the crop and pad policies, a file that leaves the folder -- keeps
the PIL path, pixel for pixel."""

import os

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from tasks.core.config import SplitParams
from tasks.data import ingest
from tasks.data.datasets import Split, load_folder
from tasks.modality.images import decode
from tasks.modality.pixels import Images, Pixels

ORDINARY = {  # name: expected decoder
    "a/photo.jpg": "jpeg",  # 640x480: DCT scaling 1/8 at 32 px, 1/2 at 224
    "a/square.jpg": "jpeg",  # 1000x1000: 1/4 at 224
    "a/progressive.jpg": "jpeg",
    "a/grey.jpg": "jpeg",
    "b/photo.png": "png",
    "b/grey.png": "png",
    "b/tiny.png": "png",  # 28x28 grey, upscaled (the demo's Fashion-MNIST)
    "b/small.jpg": "jpeg",  # 20x30, upscaled
}
ODD = ["a/rotated.jpg", "a/cmyk.jpg", "b/palette.png", "b/alpha.png", "b/deep.png", "b/deep-rgb.png", "b/anim.gif"]


def photo(width: int, height: int, seed: int) -> Image.Image:
    """Texture and edges, as a photo has (flat colour would hide the decoders' differences)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse((x, y, x + width // 5, y + height // 4), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.SHARPEN)


def make_folder(root):
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    photo(640, 480, 0).save(root / "a/photo.jpg", quality=85)
    photo(1000, 1000, 1).save(root / "a/square.jpg", quality=90)
    photo(500, 375, 2).save(root / "a/progressive.jpg", quality=80, progressive=True)
    photo(480, 640, 3).convert("L").save(root / "a/grey.jpg", quality=85)
    photo(300, 200, 4).save(root / "b/photo.png")
    photo(256, 256, 5).convert("L").save(root / "b/grey.png")
    photo(28, 28, 6).convert("L").save(root / "b/tiny.png")
    photo(20, 30, 7).save(root / "b/small.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    photo(300, 120, 8).save(root / "a/rotated.jpg", exif=exif.tobytes())
    photo(64, 64, 9).convert("CMYK").save(root / "a/cmyk.jpg")
    photo(64, 64, 10).convert("P").save(root / "b/palette.png")
    rgba = photo(64, 64, 11).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "b/alpha.png")
    Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16).save(root / "b/deep.png")
    deep_rgb = (np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3) * 5 % 65536).astype(">u2")
    (root / "b/deep-rgb.png").write_bytes(png_16_bit_rgb(deep_rgb))
    frames = [photo(40, 40, s) for s in (12, 13)]
    frames[0].save(root / "b/anim.gif", save_all=True, append_images=frames[1:])
    return root


def png_16_bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (PIL opens it as 8-bit "RGB", but TensorFlow would scale it its own way)."""
    import struct
    import zlib

    height, width, _ = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + pixels[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("native") / "raw")


def split_of_all(folder) -> Split:
    data = load_folder(folder, SplitParams(val_fraction=0.0001, test_fraction=0.0001), Images())
    whole = [data.train, data.val, data.test]
    files = [f for s in whole for f in s.files]
    decoders = [d for s in whole for d in s.decoders]
    return Split(folder, files, np.zeros(len(files), np.int64), decoders=decoders)


def test_the_manifest_names_the_files_tensorflow_decodes_exactly(folder):
    manifest = ingest.scan(folder, Images()).set_index("path")
    assert manifest["decodable"].all(), manifest["error"].dropna().to_dict()
    named = {path: (d if isinstance(d, str) else None) for path, d in manifest["decoder"].items()}
    assert named == {**ORDINARY, **dict.fromkeys(ODD)}


@pytest.mark.parametrize("size", [32, 224])
def test_ordinary_files_decode_in_the_graph_within_a_grey_level_of_pil(folder, size, monkeypatch):
    split = split_of_all(folder)
    pixels = Pixels(size)
    kinds, _ = pixels.routes(split.root, split.files, split.decoders, split.parts)
    assert {f for f, k in zip(split.files, kinds, strict=True) if k} == set(ORDINARY)
    # PIL's own path is refused for the ordinary files: they can only have come through the graph
    pil_decode = Pixels.decode_file

    def only_odd(self, root, relative, parts=()):
        assert relative in ODD, f"{relative} went through PIL"
        return pil_decode(self, root, relative, parts)

    monkeypatch.setattr(Pixels, "decode_file", only_odd)
    streamed = np.concatenate(list(split.batches(pixels, 4, labels=False).as_numpy_iterator()))
    monkeypatch.undo()
    expected = np.stack([decode((folder / f).read_bytes(), size) for f in split.files])
    assert streamed.shape == expected.shape and streamed.dtype == np.uint8
    for i, name in enumerate(split.files):
        diff = np.abs(streamed[i].astype(int) - expected[i].astype(int))
        if name in ODD:
            assert diff.max() == 0, name  # through PIL, exactly
        else:  # the bound: at most 1 grey level on 99.9% of pixel values
            assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2, (name, (diff <= 1).mean(), diff.max())
    native = np.concatenate([np.abs(streamed[i].astype(int) - expected[i]).ravel() for i, f in enumerate(split.files) if f in ORDINARY])
    assert native.max() > 0  # another decoder ran (a rounding apart), not PIL again


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_crop_and_pad_keep_the_pil_path_exactly(folder, resize):
    split = split_of_all(folder)
    pixels = Pixels(48, resize)
    assert not pixels.routes(split.root, split.files, split.decoders, split.parts)[0].any()
    streamed = np.concatenate(list(split.batches(pixels, 4, labels=False).as_numpy_iterator()))
    np.testing.assert_array_equal(streamed, split.examples(pixels))


def test_a_file_that_leaves_the_folder_never_reaches_the_graph(folder, tmp_path):
    """A link swapped in after inspection: routed to PIL, which refuses it in one line."""
    outside = tmp_path / "secret.jpg"
    photo(64, 64, 20).save(outside)
    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    os.symlink(outside, root / "a" / "link.jpg")
    split = Split(root, ["a/link.jpg"], np.zeros(1, np.int64), decoders=["jpeg"])
    assert not Pixels(32).routes(root, split.files, split.decoders, ())[0].any()
    with pytest.raises(Exception, match="outside"):
        list(split.batches(Pixels(32), 1, labels=False).as_numpy_iterator())
