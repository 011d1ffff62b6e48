"""`triplet-tfx embed` and `triplet-tfx search`: the served model's client
(components/serving/client/) on image files, from a SavedModel or a TF Serving server."""

from __future__ import annotations

import argparse
import os
import sys

from triplet_tfx.components.config import PipelineConfig
from triplet_tfx.pipeline import terminal

SERVING_EPILOG = """\
The model: --model PATH loads a SavedModel (a version folder, or the base directory of numbered
versions: the latest, or --model-version) in this process; by default the latest version pushed
under <output-root>/serving/<model-name>. --server URL calls a running TF Serving instead:
http://HOST:8501 (REST, /v1/models/<model-name>[/versions/<v>]:predict) or grpc://HOST:8500 (gRPC
PredictionService). Unreachable servers (connection refused, HTTP 503, gRPC UNAVAILABLE) are
retried --retries times with exponential backoff. Results go to standard output.

Folders are searched recursively for PNG, JPEG, GIF and BMP files (and WebP, TIFF, HEIF files, to
refuse them by name), by the rule of the pipeline's images: folders: hidden files and folders (.*,
macOS's AppleDouble ._* files, __MACOSX) are ignored; symbolic links are followed, each folder once
(a link back to a folder on the way, such as loop -> ., is left out with a warning); a broken link
is an error naming it. Only regular files are read: anything else named like an image (a FIFO
x.png, a socket, a device) is refused by name, one line, before any model work.

TensorFlow's own lines (CUDA and CPU-feature notes, "Local rendezvous is aborting...") and library
warnings are not shown; --verbose shows them.
"""


def add_commands(commands) -> None:
    """`embed` and `search`: the served model's client (components/serving/client/)."""
    from triplet_tfx.components.serving.client import result_formats

    defaults = PipelineConfig()
    for name, summary in (
        ("embed", "embeddings of images, from a SavedModel or a TF Serving server"),
        ("search", "nearest neighbours of images in the served model's index"),
    ):
        command = commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=SERVING_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument(
            "inputs",
            nargs="+",
            metavar="FILE|FOLDER",
            help="PNG, JPEG, GIF or BMP files, or folders of them (searched recursively)",
        )
        if name == "search":
            command.add_argument("--k", type=int, default=5, help="neighbours per image (default %(default)s)")
            command.add_argument(
                "--nprobe",
                type=int,
                metavar="N",
                help="lists of an ivf index searched per query (default: the index's own, its --index-nprobe); "
                "more lists: better recall, slower. Only for ivf indexes: an exact index refuses it",
            )
        where = command.add_mutually_exclusive_group()
        where.add_argument("--model", metavar="PATH", help="SavedModel folder or base directory of versions")
        where.add_argument("--server", metavar="URL", help="http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")
        command.add_argument("--model-name", default=defaults.model_name, help="served model (default %(default)s)")
        command.add_argument("--model-version", type=int, metavar="N", help="model version (default: the latest)")
        command.add_argument(
            "--output-root",
            default=defaults.output_root,
            help="where the default model is looked for (default %(default)s)",
        )
        command.add_argument(
            "--serving-dir", help="the run's --serving-dir, if it set one (default <output-root>/serving)"
        )
        command.add_argument(
            "--format", choices=result_formats.FORMATS, default="jsonl", help="JSON lines or TSV (default %(default)s)"
        )
        command.add_argument(
            "--projector",
            metavar="DIR",
            help="also write vecs.tsv and meta.tsv (the file "
            "names) for TensorBoard's Embedding Projector into DIR (new or empty)",
        )
        command.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default %(default)s)")
        command.add_argument(
            "--retries", type=int, default=3, help="retries of an unreachable server (default %(default)s)"
        )
        command.add_argument("--batch-size", type=int, default=64, help="images per request (default %(default)s)")
        command.add_argument(
            "--verbose",
            action="store_true",
            help="show TensorFlow's own lines and library warnings on the terminal (by default they are dropped)",
        )
        command.set_defaults(handler=serving_command, uses_config=False)


def serving_command(args: argparse.Namespace) -> int:
    """`embed` and `search`: TensorFlow's native lines and library warnings are dropped unless
    --verbose (`terminal.quiet`), as `triplet-tfx run` keeps them off the terminal."""
    with terminal.quiet(getattr(args, "verbose", False)):
        return _serving_command(args)


def _serving_command(args: argparse.Namespace) -> int:
    from triplet_tfx.components.serving.client import (
        Client,
        IndexSizeError,
        NprobeError,
        errors as client_errors,
        image_files,
        result_formats,
    )

    def fail(message: str) -> int:
        print(f"triplet-tfx: error: {message}", file=sys.stderr)
        return 2

    def warn(message: str) -> None:
        print(f"triplet-tfx: warning: {message}", file=sys.stderr)

    nprobe = getattr(args, "nprobe", None)
    for flag, value, low in (
        ("--k", getattr(args, "k", 1), 1),
        ("--nprobe", 1 if nprobe is None else nprobe, 1),
        ("--retries", args.retries, 0),
        ("--batch-size", args.batch_size, 1),
        ("--timeout", args.timeout, 1e-9),
    ):
        if value < low:
            return fail(f"{flag}: must be at least {low:g}, got {value}")
    if args.server and not args.server.startswith(("http://", "https://", "grpc://")):
        return fail(f"--server {args.server}: expected http://HOST:8501 (REST) or grpc://HOST:8500 (gRPC)")
    if args.projector and os.path.isdir(args.projector) and os.listdir(args.projector):
        return fail(f"--projector {args.projector}: folder is not empty; choose a new or empty one")
    model = args.model or (
        None
        if args.server
        else PipelineConfig(
            output_root=os.path.abspath(args.output_root), serving_dir=args.serving_dir, model_name=args.model_name
        ).serving_model_dir
    )
    try:
        files = image_files(args.inputs, warn=warn)
        with Client(
            model=model,
            server=args.server,
            model_name=args.model_name,
            version=args.model_version,
            timeout=args.timeout,
            retries=args.retries,
            batch_size=args.batch_size,
        ) as client:
            if args.command == "search":
                client.check_k(args.k)  # the index size, where the model tells it: before any image work
                result_formats.write_neighbours(sys.stdout, files, client.search(files, args.k, nprobe), args.format)
            embeddings = client.embed(files) if args.command == "embed" or args.projector else None
            if args.command == "embed":
                result_formats.write_embeddings(sys.stdout, files, embeddings, args.format)
            if args.projector:
                result_formats.write_projector(args.projector, files, embeddings)
    except client_errors.VersionNotLoadedError as err:
        return fail(f"--model-version {args.model_version}: {err}")
    except client_errors.ModelNotFoundError as err:
        return fail(
            f"--model-name {args.model_name}: {err}"
            if args.server
            else f"--model: {err}"
            + ("" if args.model else "; run `triplet-tfx run` first, or give --model PATH or --server URL")
        )
    except client_errors.ImageInputError as err:
        return fail(str(err))
    except IndexSizeError as err:
        return fail(f"--k {args.k}: {err.detail}")
    except NprobeError as err:
        return fail(f"--nprobe {nprobe}: {err.detail}")
    except client_errors.ServingError as err:
        print(f"triplet-tfx: error: {err}", file=sys.stderr)
        return 1
    return 0
