"""The Python client of the served model: embeddings and nearest neighbours of images.

    from triplet_tfx.components.serving.client import Client
    with Client(model="runs/serving/triplet_mnist") as client:            # in-process, latest version
        vectors = client.embed(["digit.png", open("other.png", "rb").read()])
    with Client(server="http://localhost:8501", model_name="triplet_mnist") as client:  # TF Serving REST
        result = client.search(["digit.png"], k=5)      # result.ids / .labels / .class_names / .distances: [N, k]
        result = client.search(["digit.png"], k=5, nprobe=16)  # an ivf index: 16 lists probed per query
        found = client.match(["digit.png"])             # found.ids / ... / .matched: [N], the nearest item
    Client(server="grpc://localhost:8500", model_name="triplet_mnist", version=1795891345)  # gRPC

Images are file paths or encoded bytes (PNG, JPEG, GIF, BMP); the served model decodes and resizes
them (`embed_images`, `search` signatures). All three ways give the same numbers.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import re
import stat
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from triplet_tfx.components.contract import (
    CLASS_NAMES_OUTPUT,
    DISTANCES_OUTPUT,
    EMBED_IMAGES_SIGNATURE,
    EMBEDDING_KEY,
    IDS_OUTPUT,
    IMAGE_SUFFIXES,
    IMAGES_INPUT,
    K_INPUT,
    LABELS_OUTPUT,
    MATCH_SIGNATURE,
    MATCHED_OUTPUT,
    NPROBE_INPUT,
    SEARCH_SIGNATURE,
    SEARCH_WITH_NPROBE_SIGNATURE,
    is_image_name,
)
from triplet_tfx.components.files import file_kind
from triplet_tfx.components.images import IMAGE_MAGIC
from triplet_tfx.components.serving.client.errors import ImageInputError, InvalidRequestError
from triplet_tfx.components.serving.client.transports import GrpcTransport, LocalTransport, RestTransport

SEARCH_OUTPUTS = (IDS_OUTPUT, LABELS_OUTPUT, DISTANCES_OUTPUT)
# Served models built before class names have no class_names output: asked for when the first search
# finds it (the labels as text stand in for it otherwise).
_WITH_CLASS_NAMES = SEARCH_OUTPUTS + (CLASS_NAMES_OUTPUT,)

Image = Union[str, os.PathLike, bytes]
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The k nearest reference items of each query, nearest first: arrays of shape [N, k]."""

    ids: np.ndarray  # str
    labels: np.ndarray  # int64
    distances: np.ndarray  # float32
    class_names: Optional[np.ndarray] = None  # str: the labels' class names (the ids as text for integer labels)


@dataclasses.dataclass(frozen=True)
class MatchResult:
    """Each query's nearest reference item, and whether it is near enough to be a match (the served
    model's calibrated distance threshold): arrays of shape [N]."""

    ids: np.ndarray  # str
    labels: np.ndarray  # int64
    class_names: np.ndarray  # str
    distances: np.ndarray  # float32
    matched: np.ndarray  # bool


class IndexSizeError(InvalidRequestError):
    """k is larger than the served index: "k 501: the index holds 500 references". `size` is None
    where the model does not say (then `detail` is the server's own message, on one line)."""

    def __init__(self, k: int, size: Optional[int], detail: str = ""):
        self.k, self.size = k, size
        self.detail = (
            f"the index holds {size} references" if size is not None else f"larger than the served index ({detail})"
        )
        super().__init__(f"k {k}: {self.detail}")


class NprobeError(InvalidRequestError):
    """nprobe the served index cannot take: "nprobe 9: the index has 8 lists", or an exact index
    (no `search_with_nprobe` signature). `detail` is the message after "nprobe N: "."""

    def __init__(self, nprobe: int, detail: str):
        self.nprobe, self.detail = nprobe, detail
        super().__init__(f"nprobe {nprobe}: {detail}")


# The search signatures' assertions on k and nprobe (index.py, ivf_index.py, and older served models):
# their messages name the bound, the index size or the number of lists, as "[y (...) = ] [500]".
_K_ASSERTION = re.compile(r"k must be at most the index size")
_NPROBE_ASSERTION = re.compile(r"nprobe must be at most the number of lists")
_BOUND = re.compile(r"\[y \([^)]*\) = \] \[(\d+)\]")


def _hidden(name: str) -> bool:
    """Hidden files and folders (.*, among them macOS's AppleDouble ._* files) and __MACOSX folders:
    left out, as the pipeline's images: folders leave them out (components/data/image_folder.py)."""
    return name.startswith(".") or name == "__MACOSX"


def _warn(message: str) -> None:
    logger.warning("%s", message)


def _regular_file(path: str, missing: str = "no such file or folder") -> None:
    """Raises ImageInputError naming `path` unless it is (a symbolic link to) a regular file: only
    those are opened, so that a FIFO named x.png cannot block the client."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as err:
        if os.path.islink(path):
            raise ImageInputError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        raise ImageInputError(f"{path}: {missing or f'cannot read it ({err.strerror})'}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ImageInputError(f"{path}: symbolic link loop") from None
        raise ImageInputError(f"{path}: cannot read it ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ImageInputError(f"{path}: not a regular file ({file_kind(mode)})")


def _walk(folder: str, warn: Callable[[str], None]) -> List[str]:
    """The image files below `folder` by the pipeline's rule for image folders: visible entries only;
    symbolic links followed, each folder listed once (a link back to a folder on the way, e.g.
    `loop -> .`, is a loop: left out with a warning); a broken link or a link loop in the file system
    (`a -> a`) is an error or a warning naming it; image names (IMAGE_SUFFIXES, and the suffixes
    refused by name: WebP, TIFF, HEIF...) are listed whatever they are, so that a FIFO or a WebP
    file is refused by name when checked rather than left out unnoticed."""
    found: List[str] = []
    listed: Dict[Tuple[int, int], str] = {}

    def visit(path: str, info: os.stat_result, ancestors: Tuple[Tuple[int, int], ...]) -> None:
        key = (info.st_dev, info.st_ino)
        if key in ancestors or key in listed:
            target = os.readlink(path) if os.path.islink(path) else path
            warn(
                f"{path}: symbolic link loop (to {target}), left out"
                if key in ancestors
                else f"{path}: the same folder as {listed[key]}, left out"
            )
            return
        listed[key] = path
        try:
            names = sorted(os.listdir(path))
        except OSError as err:
            raise ImageInputError(f"{path}: cannot list it ({err.strerror})") from None
        for name in names:
            if _hidden(name):
                continue
            child = os.path.join(path, name)
            try:
                child_info = os.stat(child)
            except FileNotFoundError:
                if os.path.islink(child):
                    raise ImageInputError(f"{child}: broken symbolic link (to {os.readlink(child)})") from None
                continue  # removed meanwhile
            except OSError as err:
                if err.errno == errno.ELOOP:
                    warn(f"{child}: symbolic link loop (to {os.readlink(child)}), left out")
                    continue
                raise ImageInputError(f"{child}: cannot read it ({err.strerror})") from None
            if stat.S_ISDIR(child_info.st_mode):
                visit(child, child_info, ancestors + (key,))
            elif is_image_name(name):
                found.append(child)

    visit(folder, os.stat(folder), ())
    return sorted(found)


def image_files(paths: Sequence[str], warn: Optional[Callable[[str], None]] = None) -> List[str]:
    """Files as given, folders expanded to their image files (recursively, sorted; the rule is
    `_walk`'s: regular files only, links followed once, hidden files ignored). `warn` gets the lines
    about what was left out (default: logged as warnings)."""
    warn = warn or _warn
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = _walk(path, warn)
            if not found:
                raise ImageInputError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        else:
            _regular_file(path)
            files.append(path)
    for name in files:  # their first bytes, so that a bad file stops us before any model work
        _check_image(name, _read(name, size=max(map(len, IMAGE_MAGIC))))
    return files


def _read(name: str, size: int = -1) -> bytes:
    _regular_file(name, missing="")
    try:
        with open(name, "rb") as f:
            return f.read(size)
    except OSError as err:
        raise ImageInputError(f"{name}: cannot read it ({err.strerror})") from None


def _check_image(name: str, content: bytes) -> None:
    if not content:
        raise ImageInputError(f"{name}: empty, not an image")
    if not content.startswith(IMAGE_MAGIC):
        raise ImageInputError(f"{name}: not a PNG, JPEG, GIF or BMP image")


def read_images(images: Union[Image, Sequence[Image]]) -> Tuple[List[str], List[bytes]]:
    """(names, encoded bytes) of file paths and byte strings; refuses what is not an image, by name."""
    if isinstance(images, (str, os.PathLike, bytes)):
        images = [images]
    names, data = [], []
    for i, image in enumerate(images):
        if isinstance(image, (bytes, bytearray)):
            name, content = f"images[{i}] (bytes)", bytes(image)
        else:
            name = os.fspath(image)
            content = _read(name)
        _check_image(name, content)
        names.append(name)
        data.append(content)
    if not names:
        raise ImageInputError("no images given")
    return names, data


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _texts(arrays) -> List[List[str]]:
    return [[v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in row] for a in arrays for row in a]


class Client:
    """One of: `model=` a SavedModel folder or TF Serving base directory (in-process), or
    `server=` "http://HOST:8501" (REST) / "grpc://HOST:8500" (gRPC) with `model_name`.

    `version`: a model version (default: the latest). `timeout`: seconds per request;
    `retries`: further attempts, with exponential backoff from `backoff` seconds, while the server
    is unreachable (connection refused, HTTP 503, gRPC UNAVAILABLE). `batch_size`: images per request.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        server: Optional[str] = None,
        model_name: str = "triplet_mnist",
        version: Optional[int] = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 64,
    ):
        if (model is None) == (server is None):
            raise ValueError("Client: give exactly one of model= (a SavedModel path) or server= (a URL)")
        if batch_size < 1 or retries < 0 or timeout <= 0:
            raise ValueError("Client: batch_size must be >= 1, retries >= 0 and timeout > 0")
        self.batch_size = batch_size
        if model is not None:
            self._transport = LocalTransport(os.fspath(model), version)
        elif server.startswith(("http://", "https://")):
            self._transport = RestTransport(server, model_name, version, timeout, retries, backoff)
        elif server.startswith("grpc://"):
            self._transport = GrpcTransport(
                server[len("grpc://") :].rstrip("/"), model_name, version, timeout, retries, backoff
            )
        else:
            raise ValueError(f"server {server!r}: expected http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")

    @property
    def target(self) -> str:
        """The model this client talks to, in words (the server or path, model name and version)."""
        return self._transport.target

    def _batches(self, images, signature: str, extra: dict, outputs: Sequence[str]):
        names, data = read_images(images)
        for start in range(0, len(data), self.batch_size):
            batch = {IMAGES_INPUT: np.array(data[start : start + self.batch_size], dtype=object), **extra}
            try:
                yield self._transport.predict(signature, batch, outputs)
            except InvalidRequestError as err:
                shown = names[start : start + self.batch_size]
                raise InvalidRequestError(
                    f"{err} (inputs: {', '.join(shown[:5])}{', ...' if len(shown) > 5 else ''})"
                ) from None

    def embed(self, images: Union[Image, Sequence[Image]]) -> np.ndarray:
        """float32 [N, D] unit-norm embeddings of the images, in order."""
        return np.concatenate(
            [
                out[EMBEDDING_KEY].astype(np.float32)
                for out in self._batches(images, EMBED_IMAGES_SIGNATURE, {}, (EMBEDDING_KEY,))
            ]
        )

    def index_size(self) -> Optional[int]:
        """The number of reference items of the served index, where the model says (a SavedModel
        loaded in this process: its `reference_ids` variable); None otherwise (TF Serving's model
        metadata has the signatures only)."""
        return self._transport.index_size()

    def check_k(self, k: int) -> None:
        """IndexSizeError if k is larger than the index, where its size is known (`index_size`)."""
        size = self.index_size()
        if size is not None and k > size:
            raise IndexSizeError(k, size)

    def search(self, images: Union[Image, Sequence[Image]], k: int = 5, nprobe: Optional[int] = None) -> SearchResult:
        """The k nearest items of the served index for each image. `nprobe`: the lists of an ivf
        index to probe per query (its `search_with_nprobe` signature); None: the index's own default
        (`search`). IndexSizeError: k is larger than the index; NprobeError: the served index is
        exact (it has no `search_with_nprobe`), or has fewer lists than nprobe. Found before any
        image is read where the model tells: its signatures always, its index size in-process."""
        _check_positive("k", k)
        self.check_k(k)
        signature, inputs = SEARCH_SIGNATURE, {K_INPUT: np.int32(k)}
        if nprobe is not None:
            _check_positive("nprobe", nprobe)
            if SEARCH_WITH_NPROBE_SIGNATURE not in self._transport.signatures():
                raise NprobeError(
                    nprobe,
                    f"{self.target}: the served index is exact and takes no nprobe "
                    f"(no {SEARCH_WITH_NPROBE_SIGNATURE} signature: only ivf indexes have lists to probe)",
                )
            signature, inputs = SEARCH_WITH_NPROBE_SIGNATURE, {**inputs, NPROBE_INPUT: np.int32(nprobe)}
        try:
            try:
                parts = list(self._batches(images, signature, inputs, _WITH_CLASS_NAMES))
            except (KeyError, TypeError):  # a model without class names: that output is missing
                parts = list(self._batches(images, signature, inputs, SEARCH_OUTPUTS))
        except InvalidRequestError as err:
            bound = _BOUND.search(str(err))
            if _K_ASSERTION.search(str(err)):
                raise IndexSizeError(k, int(bound.group(1)) if bound else None, str(err)) from None
            if nprobe is not None and _NPROBE_ASSERTION.search(str(err)):
                raise NprobeError(nprobe, f"the index has {bound.group(1)} lists" if bound else str(err)) from None
            raise
        labels = np.concatenate([p[LABELS_OUTPUT] for p in parts]).astype(np.int64).reshape(-1, k)
        if all(CLASS_NAMES_OUTPUT in p for p in parts):
            names = np.array(_texts(p[CLASS_NAMES_OUTPUT] for p in parts), dtype=str).reshape(len(labels), k)
        else:
            names = labels.astype(str)
        ids = _texts(p[IDS_OUTPUT] for p in parts)
        return SearchResult(
            ids=np.array(ids, dtype=str).reshape(len(ids), k),
            labels=labels,
            distances=np.concatenate([p[DISTANCES_OUTPUT] for p in parts]).astype(np.float32),
            class_names=names,
        )

    def match(self, images: Union[Image, Sequence[Image]]) -> MatchResult:
        """The nearest item of the served index for each image, and whether it is a match (within the
        model's calibrated threshold). InvalidRequestError, before any image is read, for a model
        without a `match` signature (one built without a calibrated threshold)."""
        if MATCH_SIGNATURE not in self._transport.signatures():
            raise InvalidRequestError(
                f"{self.target}: the served model has no {MATCH_SIGNATURE} signature (no calibrated match "
                "threshold: see --match-precision)"
            )
        outputs = _WITH_CLASS_NAMES + (MATCHED_OUTPUT,)
        parts = list(self._batches(images, MATCH_SIGNATURE, {}, outputs))
        return MatchResult(
            ids=np.array(_texts([p[IDS_OUTPUT]] for p in parts), dtype=str).reshape(-1),
            labels=np.concatenate([p[LABELS_OUTPUT] for p in parts]).astype(np.int64),
            class_names=np.array(_texts([p[CLASS_NAMES_OUTPUT]] for p in parts), dtype=str).reshape(-1),
            distances=np.concatenate([p[DISTANCES_OUTPUT] for p in parts]).astype(np.float32),
            matched=np.concatenate([p[MATCHED_OUTPUT] for p in parts]).astype(bool),
        )

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
