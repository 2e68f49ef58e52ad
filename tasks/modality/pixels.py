"""The image modality: `Pixels` (how a file becomes a backbone's input) as a stream, and `Images`
(the modality's settings, checks and raw-pixel baseline).

A split's files are read, decoded and batched by a `tf.data` pipeline, so no stage ever holds
a split's images (or their bytes) in memory at once. Each file goes through the one decoding
function (`images.decode`: EXIF rotation, CMYK, 16-bit, palette, first frame, the pixel
limit, JPEG draft mode, the resize policy), the same function the served model runs, on
`tf.data`'s parallel map (PIL releases the GIL while it decodes and resizes, so the threads
use every core) -- except the files TensorFlow's own C++ decoders give the same pixels for
(ordinary JPEG and 8-bit PNG, as the manifest's `decoder` column says: `images.native_decoder`),
which are read, decoded (JPEG at `decode`'s draft scale) and resized inside the graph, off
Python's lock, under the squash policy (within one grey level of `images.decode`: a test and
bench/results/decode_parity.md). Batches are uint8, as the models take them: preprocessing
lives inside each model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core import runner
from tasks.core.files import paths_inside, read_inside
from tasks.modality import images, register, streams

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from tasks.core.config import Params

BASELINE_URI = "pixels:28"  # the raw-pixel baseline's name in the search's records
NATIVE = ("jpeg", "png")  # manifest `decoder`s decoded in the graph (branches 1, 2; 0 is PIL's)
JPEG_SCALES = (1, 2, 4, 8)  # libjpeg's DCT scaling: PIL's draft picks the largest that keeps the size


@dataclass(frozen=True)
class Pixels:
    """How a file becomes a model's input: a `size` x `size` RGB uint8 array, fitted by the
    `resize` policy (squash, crop or pad), refused above `max_pixels`."""

    size: int
    resize: str = "squash"
    max_pixels: int = 40_000_000
    modality = "images"
    baseline_uri = BASELINE_URI
    baseline_c = 1.0  # the raw-pixel baseline's inverse L2 penalty (scikit-learn's default)

    def __post_init__(self) -> None:
        if self.resize not in images.RESIZE_POLICIES:
            raise ValueError(
                f"resize policy {self.resize!r}: choose one of {', '.join(images.RESIZE_POLICIES)}"
            )

    def key(self) -> str:
        """What decides the decoded pixels, for cache keys: `224-squash`."""
        return f"{self.size}-{self.resize}"

    @property
    def fingerprint(self) -> str:
        """As a stage input (flows.stages.caching): everything that decides the pixels."""
        return f"{self.key()}-{self.max_pixels}"

    @property
    def cost(self) -> int:
        return self.size * self.size * 3

    def describe(self) -> str:
        return f"{self.size} px"

    def meta(self) -> dict[str, Any]:
        return {
            "modality": "images",
            "column": "image",
            "input": {"dtype": "float32", "layout": "NHWC", "range": [0, 255], "channels": "RGB"},
            "image_size": self.size,
            "max_pixels": self.max_pixels,
            "resize": self.resize,
        }

    def artifacts(self) -> dict[str, Path]:
        return {}

    @property
    def requirements(self) -> tuple[str, ...]:
        return ("pillow",)

    def decode_file(self, root: Path, relative: str, parts: tuple[Path, ...] = ()) -> np.ndarray:
        """One file under `root` (never outside it, nor outside its part of a joined split:
        `files.read_inside`) as model input."""
        return images.decode(read_inside(root, relative, parts), self.size, self.max_pixels, self.resize)

    def examples(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> np.ndarray:
        """A few files as one (n, size, size, 3) array: thumbnails, a served batch, a test."""
        out = np.empty((len(files), self.size, self.size, 3), dtype=np.uint8)
        for i, relative in enumerate(files):
            out[i] = self.decode_file(root, relative, parts)
        return out

    def preview(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> list[Any]:
        return list(self.examples(root, files, parts))

    def batches(
        self,
        root: Path,
        files: Sequence[str],
        batch_size: int,
        labels: np.ndarray | None = None,
        shuffle_seed: int | None = None,
        parts: tuple[Path, ...] = (),
        cache_bytes: int = streams.CACHE_BYTES,
        decoders: Sequence[str | None] | None = None,
    ) -> tf.data.Dataset:
        """A `tf.data` pipeline over `files` (relative to `root`; `parts`: see `decode_file`):
        decoded in parallel, in order (or reshuffled every epoch with `shuffle_seed`), batched,
        prefetched. Yields uint8 image batches, or (images, labels) with `labels`. Decoded pixels
        are kept between epochs when the whole split fits `cache_bytes`. `decoders`: each file's
        manifest `decoder` (`images.native_decoder`); without them every file goes through PIL."""
        import tensorflow as tf

        files = list(files)
        root = Path(root)
        size = self.size
        kinds, paths = self.routes(root, files, decoders, parts)

        def load(index: np.ndarray) -> np.ndarray:
            return self.decode_file(root, files[int(index)], parts)

        # Plain graph code: autograph would convert these (writing its generated source to the
        # temp folder, left there until the process exits) for nothing.
        @tf.autograph.experimental.do_not_convert
        def through_pil(index: tf.Tensor) -> tf.Tensor:
            decoded = tf.numpy_function(load, [index], tf.uint8, stateful=False)
            decoded.set_shape((size, size, 3))
            return decoded

        image = through_pil
        if kinds.any():
            kind_of, path_of = tf.constant(kinds), tf.constant(paths)

            @tf.autograph.experimental.do_not_convert
            def image(index: tf.Tensor) -> tf.Tensor:
                data = lambda: tf.io.read_file(tf.gather(path_of, index))  # noqa: E731
                branches = [lambda: through_pil(index), lambda: self._jpeg(data()), lambda: self._png(data())]
                decoded = tf.switch_case(tf.gather(kind_of, index), branches)
                decoded.set_shape((size, size, 3))
                return decoded

        indices = tf.data.Dataset.range(len(files))
        # A split whose decoded pixels fit cache_bytes is decoded once and kept for later epochs
        # (training on a few hundred images decodes them dozens of times otherwise); a larger one
        # is decoded again every epoch. Either way memory stays bounded, whatever the number of files.
        cached = len(files) * self.cost <= cache_bytes
        if shuffle_seed is not None and not cached:
            indices = indices.shuffle(max(len(files), 1), seed=shuffle_seed, reshuffle_each_iteration=True)
        if labels is None:
            stream = indices.map(image, num_parallel_calls=runner.threads(), deterministic=True)
        else:
            y = streams.label_tensor(labels)

            @tf.autograph.experimental.do_not_convert
            def labelled(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
                return image(index), tf.gather(y, index)

            stream = indices.map(labelled, num_parallel_calls=runner.threads(), deterministic=True)
        if cached:
            stream = stream.cache()
            if shuffle_seed is not None:  # the same order as shuffling the indices with this seed
                stream = stream.shuffle(max(len(files), 1), seed=shuffle_seed, reshuffle_each_iteration=True)
        return stream.batch(batch_size).prefetch(2).with_options(streams.options())

    def routes(
        self, root: Path, files: Sequence[str], decoders: Sequence[str | None] | None, parts: tuple[Path, ...]
    ) -> tuple[np.ndarray, list[str]]:
        """Per file, how `batches` decodes it (0: PIL, 1 + its index in NATIVE: in the graph) and
        for the graph the file it reads: checked inside the folder here (`files.paths_inside`),
        links resolved. A file that cannot be placed goes through PIL, which says why."""
        kinds, paths = np.zeros(len(files), np.int32), [""] * len(files)
        if decoders is None or self.resize != "squash":  # crop and pad: PIL's box arithmetic
            return kinds, paths
        native = [i for i, decoder in enumerate(decoders) if decoder in NATIVE]
        for i, path in zip(native, paths_inside(root, [files[i] for i in native], parts), strict=True):
            if path is not None:
                kinds[i], paths[i] = 1 + NATIVE.index(decoders[i]), path
        return kinds, paths

    def _jpeg(self, data: tf.Tensor) -> tf.Tensor:
        """A JPEG decoded at PIL's draft scale (the largest of JPEG_SCALES that keeps both sides
        >= the target) with libjpeg's accurate integer DCT, as PIL's, then resized."""
        import tensorflow as tf

        height, width = tf.unstack(tf.io.extract_jpeg_shape(data)[:2])
        scale = tf.minimum(width // self.size, height // self.size)
        branch = tf.reduce_sum(tf.cast(scale >= tf.constant(JPEG_SCALES[1:], tf.int32), tf.int32))

        def at(ratio: int) -> Callable[[], tf.Tensor]:
            return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

        return self._squash(tf.switch_case(branch, [at(ratio) for ratio in JPEG_SCALES]))

    def _png(self, data: tf.Tensor) -> tf.Tensor:
        import tensorflow as tf

        return self._squash(tf.io.decode_png(data, channels=3))

    def _squash(self, pixels: tf.Tensor) -> tf.Tensor:
        """`images.fit`'s squash in the graph: bilinear with PIL's widened support when reducing."""
        import tensorflow as tf

        side = (self.size, self.size)
        resized = tf.image.resize(tf.cast(pixels, tf.float32), side, "bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    def baseline(self, side: int = 28) -> keras.Model:
        """The raw-pixel baseline as a backbone: the image resized to `side` x `side`, grey, scaled
        to 0..1 and flattened (784 values). A logistic regression on it is the simplest image
        classifier there is, and on tiny or low-resolution sets a hard one to beat."""
        import keras

        inputs = keras.Input((self.size, self.size, 3), name="pixels")
        x = keras.layers.Resizing(side, side, interpolation="bilinear")(inputs)
        x = keras.layers.Rescaling(1 / 255.0)(x)
        grey = keras.initializers.Constant(1 / 3)  # the mean of R, G and B, fixed
        x = keras.layers.Dense(1, use_bias=False, kernel_initializer=grey, trainable=False, name="grey")(x)
        return keras.Model(inputs, keras.layers.Flatten(name="features")(x), name="raw_pixels")

    def fit_baseline(self, model: keras.Model, train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """The raw-pixel baseline learns nothing from the training split: features as they are."""
        return lambda x: x

    def order(self, root: Path, files: Sequence[str], parts: tuple[Path, ...] = ()) -> None:
        """Images in the files' order: each becomes the same size."""
        return None

    def scratch(self) -> None:
        """Images train the smallest backbone's architecture from scratch (a CNN)."""
        return None


def input_size(model: keras.Model, uri: str = "backbone") -> int:
    """The side of the square RGB images `model` takes; a ValueError names what it takes instead."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"{uri}: backbone takes {shape}; expected square RGB images (n, size, size, 3)")
    if len(model.output_shape) != 2:
        raise ValueError(f"{uri}: backbone gives {model.output_shape}; expected (n, features)")
    return int(shape[1])


@dataclass(frozen=True)
class Augment:
    """Training-time image augmentation (`images.flip`, `shift`, `rotate`, `contrast`)."""

    flip: bool = False
    shift: float = 0.1
    rotate: float = 0.05
    contrast: float = 0.1

    @property
    def fingerprint(self) -> str:
        return f"augment-{self.flip}-{self.shift}-{self.rotate}-{self.contrast}"

    def layers(self, seed: int) -> keras.Sequential | None:
        """The augmentation layers asked for, or None (all off)."""
        import keras

        layers: list[keras.layers.Layer] = []
        if self.flip:
            layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
        if self.shift > 0:
            layers.append(keras.layers.RandomTranslation(self.shift, self.shift, "nearest", seed=seed + 1))
        if self.rotate > 0:
            layers.append(keras.layers.RandomRotation(self.rotate, "nearest", seed=seed + 2))
        if self.contrast > 0:
            layers.append(keras.layers.RandomContrast(self.contrast, value_range=(0, 255), seed=seed + 3))
        return keras.Sequential(layers, name="augmentation") if layers else None


@dataclass(frozen=True)
class Images:
    """The image modality with a run's settings: folders of image files (`<root>/<class>/<image>`)."""

    resize: str = "squash"
    max_pixels: int = 40_000_000
    min_side: int = 8
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
    augment: Augment = Augment()
    name = "images"
    noun = "image"
    columns = ("format", "mode", "width", "height", "n_frames", "decoder")
    integer_columns = ("width", "height", "n_frames")

    @property
    def fingerprint(self) -> str:
        return f"images-{self.resize}-{self.max_pixels}-{self.min_side}-{','.join(self.formats)}"

    def inspect(self, data: bytes) -> dict[str, object]:
        return images.inspect(data, self.max_pixels)

    def expectations(self) -> list[tuple[Any, str]]:
        import great_expectations.expectations as gxe

        too_small = f"smaller than images.min_side={self.min_side} pixels"
        return [
            (
                gxe.ExpectColumnValuesToBeInSet(column="format", value_set=list(self.formats)),
                "format not in images.formats",
            ),
            (gxe.ExpectColumnValuesToBeBetween(column="width", min_value=self.min_side), too_small),
            (gxe.ExpectColumnValuesToBeBetween(column="height", min_value=self.min_side), too_small),
        ]

    def statistics(self, files: Any) -> dict[str, float]:
        return {}

    def encoding(self, size: int) -> Pixels:
        return Pixels(size, self.resize, self.max_pixels)

    def encoding_for(self, model: keras.Model, uri: str) -> Pixels:
        return self.encoding(input_size(model, uri))


def from_params(params: Params) -> Images:
    own = params.images
    augment = Augment(own.flip, own.shift, own.rotate, own.contrast)
    return Images(own.resize, own.max_pixels, own.min_side, own.formats, augment)


def from_meta(meta: dict[str, Any]) -> Pixels:
    # versions logged before resize policies squash, and before a pixel limit use the default's
    return Pixels(
        int(meta["image_size"]), str(meta.get("resize", "squash")), int(meta.get("max_pixels", 40_000_000))
    )


register("images", from_params, from_meta)
