"""Streamed pixels: the tf.data pipeline decodes exactly as `images.decode` does, in order or
reshuffled, never reads outside the data root, and its memory does not grow with the number
of files; the resize policies and JPEG draft mode."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from tasks.core.config import SplitParams
from tasks.data.datasets import load_folder
from tasks.modality.images import decode, fit
from tasks.modality.pixels import Pixels
from tasks.modality.pixels import Images

ROOT = Path(__file__).resolve().parents[2]


def test_the_stream_decodes_exactly_as_decode_does(tmp_path):
    folder = make_image_folder(tmp_path / "raw", ["a", "b"], per_class=7, size=20)
    # an EXIF-rotated JPEG, a CMYK JPEG, a palette PNG and a 16-bit PNG among them
    rotated = Image.new("RGB", (30, 12), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    rotated.save(folder / "a" / "rotated.jpg", exif=exif.tobytes())
    Image.new("CMYK", (16, 16), (0, 128, 255, 0)).save(folder / "a" / "cmyk.jpg")
    Image.new("P", (16, 16), 3).save(folder / "b" / "palette.png")
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(folder / "b" / "deep.png")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*"))
    for resize in ("squash", "crop", "pad"):
        pixels = Pixels(24, resize)
        streamed = np.concatenate(list(pixels.batches(folder, files, 4).as_numpy_iterator()))
        expected = np.stack([decode((folder / f).read_bytes(), 24, resize=resize) for f in files])
        assert streamed.dtype == np.uint8 and streamed.shape == (len(files), 24, 24, 3)
        np.testing.assert_array_equal(streamed, expected)
        np.testing.assert_array_equal(pixels.examples(folder, files), expected)


def test_labels_follow_their_images_and_a_seed_reshuffles_the_same_way(tmp_path):
    folder = make_image_folder(tmp_path / "raw", ["a", "b", "c"], per_class=5, size=8)
    data = load_folder(folder, SplitParams(val_fraction=0.2, test_fraction=0.2), Images(max_pixels=40_000_000))
    train, pixels = data.train, Pixels(8)
    one = [(x, y) for x, y in train.batches(pixels, 3, shuffle_seed=7).as_numpy_iterator()]
    two = [(x, y) for x, y in train.batches(pixels, 3, shuffle_seed=7).as_numpy_iterator()]
    for (xa, ya), (xb, yb) in zip(one, two, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    order = np.concatenate([y for _, y in one])
    assert sorted(order.tolist()) == sorted(train.y.tolist())
    images = np.concatenate([x for x, _ in one])
    for image, label in zip(images, order, strict=True):  # each image came with its own label
        matches = [i for i in range(len(train)) if np.array_equal(train.subset([i]).examples(pixels)[0], image)]
        assert train.y[matches[0]] == label


def test_the_stream_never_reads_outside_the_data_root(tmp_path):
    folder = make_image_folder(tmp_path / "raw", ["a"], per_class=2, size=8)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, folder / "a" / "link.png")
    with pytest.raises(Exception, match="outside|not a regular file|symlink|link"):
        list(Pixels(8).batches(folder, ["a/link.png"], 1).as_numpy_iterator())


def test_resize_policies_keep_what_they_say():
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 10, 20))  # a red left quarter
    squash = np.asarray(fit(wide, 20, "squash"))
    crop = np.asarray(fit(wide, 20, "crop"))
    pad = np.asarray(fit(wide, 20, "pad"))
    assert squash.shape == crop.shape == pad.shape == (20, 20, 3)
    assert squash[10, 2, 0] > 200  # squashed: the red quarter is still there, narrower
    assert crop[10, 2, 0] < 50  # the centre square has no red
    assert pad[0, 10].tolist() == [0, 0, 0] and pad[10, 2, 0] > 200  # black bars above, all of it kept
    with pytest.raises(ValueError, match="squash, crop, pad"):
        fit(wide, 20, "stretch")
    with pytest.raises(ValueError, match="resize policy"):
        Pixels(20, "stretch")


def test_a_large_jpeg_decodes_in_draft_mode_close_to_the_full_decode():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((1200, 800), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    drafted = decode(data, 64).astype(int)
    with Image.open(io.BytesIO(data)) as image:  # no draft: all 960,000 pixels decoded
        full = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(drafted - full).mean() < 6  # the same picture (DCT scaling, then bilinear)
    with Image.open(io.BytesIO(data)) as image:
        image.draft(None, (64, 64))
        assert image.size == (150, 100)  # 1/8 scale: both sides still >= 64


def test_streaming_memory_does_not_grow_with_the_number_of_files(tmp_path):
    """3,000 tiny files (12,000 entries) streamed in a fresh process with a 16 MB cache budget:
    300 of them (14.7 MB decoded) fit the budget and are kept, 3,000 (147 MB) do not and are
    decoded per epoch, so peak RSS grows by less than the budget plus a few batches (a split
    held in memory, or a cache that ignored its budget, would grow by 130 MB)."""
    folder = tmp_path / "many"
    (folder / "a").mkdir(parents=True)
    image = Image.new("RGB", (8, 8), (10, 200, 30))
    for i in range(3000):
        image.save(folder / "a" / f"{i:05d}.png")
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from tasks.modality.pixels import Pixels\n"
        "folder = Path(sys.argv[1])\n"
        "files = sorted(str(p.relative_to(folder)) for p in folder.rglob('*.png'))\n"
        "def peak(n):\n"
        "    stream = Pixels(64).batches(folder, files[:n] * 4, 32, shuffle_seed=0, cache_bytes=16 * 2**20)\n"
        "    for _ in range(2):\n"
        "        for _ in stream.as_numpy_iterator():\n"
        "            pass\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "small = peak(300)\n"
        "large = peak(3000)\n"
        "print(small, large)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    small, large = map(int, done.stdout.split()[-2:])
    # 12,000 decoded 64-px images would be 147 MB held at once; the stream holds a few batches
    assert large - small < 40_000, (small, large)  # KB


def test_no_pipeline_of_ours_runs_the_tf_data_autotuner(tmp_path):
    """The autotuner's thread sleeps 10 ms, 20 ms, ... 5.12 s between wake-ups, and a pass over a
    `numpy_function` map could wait for its next wake-up at the end of the data, up to doubling
    the pass (bench/results/scale.md, 224 px): every pipeline we build turns it off."""
    from tasks.models.features import row_batches

    folder = make_image_folder(tmp_path / "raw", ["a", "b"], per_class=3, size=8)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.*"))
    built = [
        Pixels(8).batches(folder, files, 2),
        Pixels(8).batches(folder, files, 2, labels=np.zeros(len(files)), shuffle_seed=1),
        row_batches(np.zeros((6, 4), "float32"), np.zeros(6), 2, seed=None),
        row_batches(np.zeros((6, 4), "float32"), np.zeros(6), 2, seed=3),
    ]
    for pipeline in built:
        assert pipeline.options().autotune.enabled is False
        assert pipeline.options().threading.private_threadpool_size == os.cpu_count()



def mapped_mb(path: Path) -> float:
    """How much of the file at `path` is resident in this process's maps (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isdigit() or line[:1] in "abcdef" and "-" in line.split()[0]:
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total / 1024


def test_a_pass_over_a_memory_mapped_cache_leaves_its_pages_out_of_resident_memory(tmp_path):
    """A shuffled epoch over a 200 MB feature cache gives every row once, and the file's pages
    it reads never count in the process's resident memory (backbones.row_reader: without it one
    batch mapped almost the whole file; bench/results/text_scale.md)."""
    from tasks.models.features import row_batches

    rows, dim = 130_000, 384  # 200 MB of float32
    path = tmp_path / "cache.npy"
    written = np.lib.format.open_memmap(path, mode="w+", dtype="float32", shape=(rows, dim))
    for i in range(0, rows, 10_000):
        written[i : i + 10_000] = np.arange(i, min(i + 10_000, rows), dtype="float32")[:, None]
    written.flush()
    del written
    cache = np.load(path, mmap_mode="r")
    seen, most = [], 0.0
    for x, y in row_batches(cache, np.arange(rows) % 3, 4096, seed=0).take(-(-rows // 4096)):
        seen.append(x.numpy()[:, 0])
        assert (x.numpy() == x.numpy()[:, :1]).all() and (y.numpy() == x.numpy()[:, 0] % 3).all()
        most = max(most, mapped_mb(path))
    assert sorted(np.concatenate(seen).astype(int)) == list(range(rows))
    assert most < 8, most  # MB; through the map: about 190
