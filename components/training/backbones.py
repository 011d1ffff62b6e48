"""Keras Applications backbones (`--network mobilenet_v3_small|mobilenet_v3_large|efficientnet_v2_b0|
resnet50_v2`) and their weights (`--backbone-weights imagenet|none|PATH`).

network.py puts a backbone between the input and the projection head: the model's input is the
Transform's float32 image in [0, 1]; a Rescaling layer maps it to what the backbone's own
preprocessing expects ([0, 255] for MobileNetV3 and EfficientNetV2, whose first layers rescale it
themselves: include_preprocessing; [-1, 1] for ResNet50V2, `resnet_v2.preprocess_input`), so the
exported model preprocesses as training did, by construction. The backbone is one nested layer of
the model (include_top=False, pooling="avg"): freezing it is `backbone_of(model).trainable = False`.

Weights: `imagenet` is Keras' download into ~/.keras/models (once); `none`: random; or the path of a
Keras weights file of the backbone without its top (.weights.h5 from `backbone.save_weights`, or a
.h5 file such as Keras' own ImageNet download, copied to a machine without internet).
`check_backbone_weights` is the pre-flight check (pipeline/cli.py `preflight`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse
from typing import Dict, NamedTuple, Optional, Sequence

import keras

from triplet_tfx.components.config import BACKBONES, ConfigError

FLAG = "train.backbone_weights (--backbone-weights)"
CONNECT_TIMEOUT_S = 5.0  # the pre-flight reachability probe of the download host (DNS included)
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0  # per socket operation while downloading: a stalled download fails


class BackboneWeightsError(ConfigError):
    """--backbone-weights cannot be used; one line, naming the flag (and the file)."""


class WeightsFile(NamedTuple):
    """Keras' ImageNet weights file of a backbone without its top: name in ~/.keras/models, URL, md5."""

    file_name: str
    origin: str
    file_hash: str


def _application(name: str):
    apps = keras.applications
    return {
        "mobilenet_v3_small": apps.MobileNetV3Small,
        "mobilenet_v3_large": apps.MobileNetV3Large,
        "efficientnet_v2_b0": apps.EfficientNetV2B0,
        "resnet50_v2": apps.ResNet50V2,
    }[name]


def imagenet_weights_file(name: str) -> WeightsFile:
    """The file Keras downloads for `name`'s ImageNet weights (include_top=False), from the Keras
    modules' own tables (backbones_test checks it against what Keras asks for)."""
    from keras.src.applications import efficientnet_v2, mobilenet_v3, resnet

    if name.startswith("mobilenet_v3_"):
        model_name = f"{name.rsplit('_', 1)[1]}_224_1.0_float"
        file_name = f"weights_mobilenet_v3_{model_name}_no_top_v2.h5"
        return WeightsFile(
            file_name, mobilenet_v3.BASE_WEIGHT_PATH + file_name, mobilenet_v3.WEIGHTS_HASHES[model_name][1]
        )
    if name == "efficientnet_v2_b0":
        file_name = "efficientnetv2-b0_notop.h5"
        return WeightsFile(
            file_name, efficientnet_v2.BASE_WEIGHTS_PATH + file_name, efficientnet_v2.WEIGHTS_HASHES["b0"][1]
        )
    if name == "resnet50_v2":
        file_name = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return WeightsFile(file_name, resnet.BASE_WEIGHTS_PATH + file_name, resnet.WEIGHTS_HASHES["resnet50v2"][1])
    raise ValueError(f"unknown backbone {name!r}: one of {', '.join(BACKBONES)}")


def keras_cache_dir() -> str:
    """Where keras.utils.get_file keeps downloads (KERAS_HOME or ~/.keras, then models/)."""
    from keras.src.backend import config as backend_config

    home = os.path.expanduser(backend_config.keras_home())
    if not os.access(home, os.W_OK):  # as get_file falls back
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models")


def input_scaling(name: str, precision: str = "float32") -> keras.layers.Layer:
    """[0, 1] images -> the range the backbone's preprocessing expects (module docstring)."""
    if name == "resnet50_v2":  # resnet_v2.preprocess_input ("tf" mode): x / 127.5 - 1 on [0, 255]
        return keras.layers.Rescaling(2.0, offset=-1.0, name="backbone_input_scaling", dtype=precision)
    # MobileNetV3 and EfficientNetV2 rescale [0, 255] themselves (include_preprocessing=True).
    return keras.layers.Rescaling(255.0, name="backbone_input_scaling", dtype=precision)


@contextlib.contextmanager
def _global_dtype_policy(precision: str):
    """Keras Applications take no dtype: their layers follow the global policy while they are built."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def keras_weights_argument(backbone_weights: str) -> Optional[str]:
    return None if backbone_weights == "none" else backbone_weights


def build_backbone(
    name: str, image_shape: Sequence[int], backbone_weights: str = "none", precision: str = "float32"
) -> keras.Model:
    """The Keras Applications model without its top, average-pooled: [B, H, W, 3] in the backbone's
    input range -> [B, features]. backbone_weights: `imagenet` (downloads once), `none` or a path."""
    kwargs: Dict = dict(
        include_top=False,
        pooling="avg",
        input_shape=tuple(image_shape),
        weights=keras_weights_argument(backbone_weights),
    )
    if name != "resnet50_v2":
        kwargs["include_preprocessing"] = True
    with _global_dtype_policy(precision):
        return _application(name)(**kwargs)


def backbone_of(model: keras.Model) -> Optional[keras.Model]:
    """The backbone (the nested Keras Applications model) of an embedding model; None for the small
    networks."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


# -- pre-flight --------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _reachable(origin: str, timeout: float) -> Optional[str]:
    """None when a TCP connection to the origin's host opens within `timeout` seconds (DNS included:
    a thread, since name resolution ignores socket timeouts); else why not."""
    url = urllib.parse.urlsplit(origin)
    port = url.port or (443 if url.scheme == "https" else 80)
    result = {}

    def probe():
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as err:
            result["error"] = err.strerror or _first_line(err)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if result.get("ok"):
        return None
    return result.get("error") or f"no answer within {timeout:.0f} s"


def ensure_imagenet_weights(name: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """The path of `name`'s ImageNet weights in Keras' cache, downloaded first when absent (or
    incomplete); BackboneWeightsError, one line, when they cannot be fetched. Never hangs: the host
    is probed with a short timeout first, and the download fails when a socket stalls."""
    from keras.src.utils import file_utils

    weights = imagenet_weights_file(name)
    cached = os.path.join(keras_cache_dir(), weights.file_name)
    if os.path.exists(cached) and file_utils.validate_file(cached, weights.file_hash):
        return cached
    why = _reachable(weights.origin, timeout)
    if why is None:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
        try:
            return keras.utils.get_file(
                weights.file_name, weights.origin, cache_subdir="models", file_hash=weights.file_hash
            )
        except Exception as err:  # noqa: BLE001  (any failure: the one-line error below)
            why = _first_line(err)
        finally:
            socket.setdefaulttimeout(previous)
    raise BackboneWeightsError(
        f"{FLAG}: cannot download the {name} ImageNet weights from {weights.origin} ({why}); on a machine "
        f"without internet copy {weights.file_name} into {keras_cache_dir()}, or give --backbone-weights PATH "
        "(a Keras weights file of the backbone without its top), or --backbone-weights none (random weights)"
    )


def check_weights_file(name: str, image_shape: Sequence[int], path: str) -> None:
    """BackboneWeightsError naming `path` unless it is a Keras weights file that loads into the
    backbone `name` at `image_shape`."""
    if not os.path.isfile(path):
        raise BackboneWeightsError(
            f"{FLAG}: {path}: no such file (give imagenet, none or the path of a Keras "
            f"weights file of the {name} backbone without its top)"
        )
    if not path.endswith((".weights.h5", ".h5")):
        raise BackboneWeightsError(f"{FLAG}: {path}: not a Keras weights file (.weights.h5 or .h5)")
    backbone = build_backbone(name, image_shape, "none")
    try:
        backbone.load_weights(path)
    except Exception as err:  # noqa: BLE001
        raise BackboneWeightsError(
            f"{FLAG}: {path} does not load into the {name} backbone without its top ({_first_line(err)})"
        ) from None


def check_backbone_weights(train, image_shape: Sequence[int]) -> None:
    """The pre-flight check of --backbone-weights (before anything runs): nothing for the small
    networks and `none`; `imagenet`: in Keras' cache, or downloaded now; a path: loads into the backbone.
    Raises BackboneWeightsError (a ConfigError) with a one-line message."""
    if train.network not in BACKBONES or train.backbone_weights == "none":
        return
    if train.backbone_weights == "imagenet":
        ensure_imagenet_weights(train.network)
    else:
        check_weights_file(train.network, image_shape, train.backbone_weights)
