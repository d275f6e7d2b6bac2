"""The ``dalidw`` command: synth, tiles, check, show, train, demo and bench.

Exit codes: 0 success, 2 bad arguments or bad data, 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

from .errors import DataError, DeviceUnavailableError, OptionError
from .startup import quiet_startup


def parse_labels(text: str) -> list[int] | list[str]:
    """'2016..2022' -> [2016, ..., 2022]; '2016,2018' -> [2016, 2018]; other words stay strings."""
    text = text.strip()
    if ".." in text:
        first, last = text.split("..", 1)
        try:
            a, b = int(first), int(last)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected FIRST..LAST years, got {text!r}") from None
        if b < a:
            raise argparse.ArgumentTypeError(f"expected FIRST <= LAST, got {text!r}")
        return list(range(a, b + 1))
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected at least one label")
    return [int(t) for t in items] if all(t.lstrip("-").isdigit() for t in items) else items


def parse_bands(text: str) -> list[int]:
    """'0,2,1' -> [0, 2, 1]."""
    try:
        bands = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected band indices like 3,2,1, got {text!r}") from None
    if not bands or min(bands) < 0:
        raise argparse.ArgumentTypeError(f"expected band indices >= 0, got {text!r}")
    return bands


def channel_options(args) -> dict:
    """The loader's options from --bands, --num-classes, --scale, --allow-outside-links and --allow-mixed-sizes."""
    options = {}
    for name in ("bands", "num_classes", "scale"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    for name in ("allow_outside_links", "allow_mixed_sizes"):
        if getattr(args, name, False):
            options[name] = True
    return options


def int_at_least(minimum: int):
    """An argparse type: a whole number >= ``minimum`` (1 for epochs and batch sizes, 0 for an epoch index)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def parse_dim(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '32x48' -> (32, 48) as (height, width)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH or SIZE, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH of positive ints, got {text!r}")
    return values[0], values[1]


def _read_csv(path: str):
    import pandas as pd

    if not os.path.isfile(path):
        raise DataError([f"no such file: {path}"], context="the tiles table cannot be read")
    try:
        data = pd.read_csv(path)
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    except Exception as err:
        raise DataError([f"{path}: {err}"], context="the tiles table cannot be read") from None
    if len(set(header)) < len(header) and len(header) == data.shape[1]:
        # pandas renames a repeated name ("target", "target.1"); the names as written let the loader
        # refuse a repeated column it reads instead of reading the first one
        data.columns = [written or name for written, name in zip(header, data.columns)]
    return data


def cmd_synth(args) -> int:
    from .synth import SynthSpec, write_dataset

    bands = args.bands if args.bands is not None else (10 if args.kind == "sentinel" else 3)
    spec = SynthSpec(regions=args.regions, height=args.size[0], width=args.size[1], tile=args.tile,
                     years=args.labels, layout=args.layout, seed=args.seed, kind=args.kind, bands=bands,
                     planar=args.planar, class_maps=args.class_maps)
    table = write_dataset(args.out_dir, spec, progress=True)
    maps = ", ClassMaps/" if args.class_maps else ""
    print(f"wrote {table.tile_id.nunique()} tiles of {spec.regions} regions, {len(spec.years)} years, "
          f"to {args.out_dir} (tiles.csv, Images/{maps})")
    return 0


def parse_tile(values: Sequence[str]) -> tuple[int, int]:
    """['32'] or ['32x48'] or ['32', '48'] -> (height, width)."""
    if len(values) == 2:
        return parse_dim(f"{values[0]}x{values[1]}")
    if len(values) == 1:
        return parse_dim(values[0])
    raise argparse.ArgumentTypeError(f"expected H W, HxW or SIZE, got {' '.join(values)!r}")


def cmd_tiles(args) -> int:
    from .tiles import write_tiles

    try:
        tile = parse_tile(args.tile)
        stride = parse_tile(args.stride) if args.stride else None
    except argparse.ArgumentTypeError as err:
        raise OptionError(f"--tile/--stride: {err}") from None
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OSError(13, "the output folder does not exist or cannot be written", folder)
    report = write_tiles(args.image_dir, tile, args.output, stride=stride, targets=args.target or (),
                         target_dir=args.target_images, labels=args.labels, nodata=args.nodata,
                         max_nodata=args.max_nodata, split=args.split, fractions=args.split_fractions,
                         seed=args.seed, progress=True)
    print(f"wrote {args.output}: {report.tiles} tiles x {len(report.labels)} labels of {report.regions} region(s)")
    if report.nodata_skipped:
        print(f"skipped {report.nodata_skipped} of {report.grid_tiles} tiles holding more than "
              f"{args.max_nodata:g} nodata (--max-nodata)")
    if args.split:
        shares = ", ".join(f"{name} {count}" for name, count in report.splits.items())
        print(f"split {args.split}: {shares} tiles" + (f"; {report.buffer_dropped} buffer tiles dropped between "
                                                      "blocks of different splits" if report.buffer_dropped else ""))
        if args.split == "random":
            print("note: a random split of tiles puts neighbouring, nearly identical pixels in train and "
                  "validation; prefer --split blocks:N or region")
    return 0


def cmd_check(args) -> int:
    from .loader import SequenceDataLoader

    data = _read_csv(args.csv)
    options = channel_options(args)
    if args.n_channels is not None:
        options["n_channels"] = args.n_channels
    loader = SequenceDataLoader(args.labels, data, args.image_dir, device="cpu", progress=True,
                                verify_decode=args.decode, **options)
    print(f"tiles: {loader.n_tiles}; regions: {len(loader.images.region_index)}; labels: {len(loader.labels)}; "
          f"images: {loader.images.paths.size} ({loader.images.dtype.name}, {loader.images.channels} band(s))")
    if args.decode:
        from tqdm.auto import tqdm

        problems = loader.check_strips(progress=True)  # sound files are not checked again when decoded below
        if problems:
            raise DataError(problems, context="images with damaged strips or tiles")
        for index in tqdm(range(len(loader)), desc="dalidw: decoding", unit="batch", leave=False):
            loader[index]
        print(f"decoded {loader.decoded_images} images, every strip and tile checked: all sound")
    if loader.slow_path:
        reasons = sorted(set(loader.slow_path.values()))
        print(f"{len(loader.slow_path)} image(s) take the slow path (tifffile on the CPU, same pixels): "
              + "; ".join(reasons))
    if args.decode:
        print("no problems found")
    else:
        print("no problems found in the table and the image headers; no pixel was decoded, so damaged strips or "
              "tiles are not found: --decode checks them and decodes every image, as training would")
    return 0


def cmd_show(args) -> int:
    from .loader import SequenceDataLoader
    from .show import save_batch_png, save_tile_png

    data = _read_csv(args.csv)
    if args.batch is not None:
        loader = SequenceDataLoader(args.labels, data, args.image_dir, dim=args.dim, device=args.device,
                                    batch_size=args.batch_size, random_seed=args.seed, shuffle=not args.no_shuffle,
                                    **channel_options(args))
        for _ in range(args.epoch):
            loader.on_epoch_end()
        if not 0 <= args.batch < len(loader):
            raise DataError([f"batch {args.batch} is out of range: an epoch has {len(loader)} batches "
                             f"of {args.batch_size}"], context="no such batch")
        rows = save_batch_png(loader, args.batch, args.output, max_rows=args.rows)
        print(f"wrote {args.output} ({rows} tiles of batch {args.batch}, epoch {args.epoch})")
        return 0
    loader = SequenceDataLoader(args.labels, data, args.image_dir, dim=args.dim, device=args.device,
                                shuffle=False, batch_size=1, **channel_options(args))
    tile = args.tile
    ids = [str(t) for t in loader.table.tile_ids]
    if str(tile) not in ids:
        raise DataError([f"tile_id {tile} is not in {args.csv}"], context="no such tile")
    save_tile_png(loader, loader.table.tile_ids[ids.index(str(tile))], args.output)
    print(f"wrote {args.output}")
    return 0


def bench_script() -> str:
    """The benchmark script of the source tree dalidw runs from."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(root, "bench", "run.py")


def cmd_bench(args) -> int:
    import subprocess

    script = bench_script()
    if not os.path.isfile(script):
        raise DataError([f"{script} is not there: the benchmark ships with the source repository, "
                         "so run dalidw from a clone (pip install -e .)"], context="no benchmark found")
    cmd = [sys.executable, script, "--layout", args.layout]
    if args.quick:
        cmd.append("--quick")
    if args.data:
        cmd += ["--data", args.data]
    if args.out:
        cmd += ["--out", args.out]
    if args.only:
        cmd += ["--only", *args.only]
    if args.curves:
        cmd.append("--curves")
    if args.rounds:
        cmd += ["--rounds", str(args.rounds)]
    if args.seed_code:
        cmd += ["--seed-code", args.seed_code]
    return subprocess.run(cmd).returncode


def _report_training(result, out: str) -> None:
    beats = "beats" if result.val_mae < result.baseline_mae else "does NOT beat"
    print(f"\ntrained on {result.train_tiles} tiles, validated on {result.val_tiles} tiles (split {result.split})")
    print(f"validation MAE {result.val_mae:.4f}; mean baseline {result.baseline_mae:.4f}: the model {beats} it")
    print(f"model:  {result.model_path}\nlog:    {result.log_path}\ncurves: {result.curves_path}")


def cmd_train(args) -> int:
    from .train import train

    data = _read_csv(args.csv)
    if "split" in data.columns:
        print("using the table's split column: training on its 'train' rows, validating on its 'val' rows")
    result = train(data, args.image_dir, args.labels, args.out, epochs=args.epochs, batch_size=args.batch_size,
                   dim=args.dim, device=args.device, seed=args.seed, strategy=args.strategy, resume=args.resume,
                   backend=args.backend, **channel_options(args))
    if result.initial_epoch:
        print(f"\nresumed after epoch {result.initial_epoch} of {args.epochs}")
    _report_training(result, args.out)
    return 0


def cmd_demo(args) -> int:
    import pandas as pd

    from .loader import SequenceDataLoader
    from .show import save_tile_png
    from .synth import SynthSpec, write_dataset
    from .train import train

    out = os.path.abspath(args.out)
    data_dir = tempfile.mkdtemp(prefix="dalidw-demo-")
    spec = SynthSpec(regions=8, height=256, width=256, tile=(32, 32), seed=args.seed)
    started = time.time()
    print(f"1/4 writing a synthetic Dynamic World-like dataset to {data_dir}")
    write_dataset(data_dir, spec)
    data = pd.read_csv(os.path.join(data_dir, "tiles.csv"))
    labels = list(spec.years)
    image_dir = os.path.join(data_dir, "Images")
    print("2/4 checking it")
    checked = SequenceDataLoader(labels, data, image_dir, device="cpu", shuffle=False)
    print(f"    {checked.n_tiles} tiles, {len(checked.images.region_index)} regions, {len(labels)} years: no problems")
    print(f"3/4 training a ConvLSTM for {args.epochs} epochs (device={args.device})")
    result = train(data, image_dir, labels, out, epochs=args.epochs, batch_size=32, dim=(32, 32),
                   device=args.device, seed=args.seed, verbose=2, backend=args.backend)
    print("4/4 drawing one tile as the model sees it")
    sample_path = os.path.join(out, "sample.png")
    tile = data.loc[data.target.idxmax(), "tile_id"]
    save_tile_png(SequenceDataLoader(labels, data, image_dir, dim=(64, 64), device=args.device, shuffle=False),
                  tile, sample_path)
    _report_training(result, out)
    print(f"sample: {sample_path}")
    print(f"done in {time.time() - started:.0f} s")
    return 0 if result.val_mae < result.baseline_mae else 1


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dalidw", description="DALI data loader for satellite image time series.")
    parser.add_argument("--version", action="version", version=f"dalidw {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the start-up messages of TensorFlow, CUDA and DALI (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND",
                                help="dalidw COMMAND --help lists the options of a command")

    def channels_args(p):
        p.add_argument("--bands", type=parse_bands, help="0-based bands to pick from multi-band images, in output "
                       "order, e.g. 3,2,1 (default: the first 3 bands of an RGB or RGBA image; the one "
                       "band with --num-classes)")
        p.add_argument("--num-classes", type=int, metavar="K", help="one-hot encode a single-band class map of ids "
                       "0..K-1 to K channels (default: no one-hot)")
        p.add_argument("--scale", type=float, help="divide samples by this instead of the sample type's range, e.g. "
                       "10000 for Sentinel-2 reflectance (default: 255 for uint8, 65535 for uint16, 32767 for "
                       "int16; float samples unscaled)")
        p.add_argument("--allow-outside-links", action="store_true",
                       help="read images that symbolic links inside IMAGE_DIR lead out of it to")
        p.add_argument("--allow-mixed-sizes", action="store_true",
                       help="read regions whose images differ in size across labels (frames resampled on "
                            "purpose): each box in each label's own pixels")

    def device_arg(p):
        p.add_argument("--device", default="auto", help="auto (the GPU where DALI sees one), cpu, gpu or gpu:N "
                                                        "(default: %(default)s)")

    def backend_arg(p):
        p.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                       help="the Keras backend to train with (default: $KERAS_BACKEND, else tensorflow); jax and "
                            "torch read the loader's PyDataset, tensorflow its tf.data dataset")

    def labels_arg(p):
        p.add_argument("--labels", type=parse_labels, default=list(range(2016, 2023)),
                       help="labels in frame order: FIRST..LAST or a comma list (default: 2016..2022)")

    p = sub.add_parser("synth", help="write a synthetic Dynamic World-like dataset")
    p.add_argument("out_dir", help="the folder to write: OUT_DIR/tiles.csv and OUT_DIR/Images/LABEL/REGION.tif")
    p.add_argument("--regions", type=int, default=4, help="regions, one image per region and label "
                                                          "(default: %(default)s)")
    p.add_argument("--size", type=parse_dim, default=(256, 256), help="region HEIGHTxWIDTH in pixels, or one SIZE "
                                                                      "(default: 256x256)")
    p.add_argument("--tile", type=parse_dim, default=(40, 45), help="tile HEIGHTxWIDTH in pixels, or one SIZE "
                                                                    "(default: 40x45)")
    p.add_argument("--layout", default="tiled", choices=["raw", "deflate", "tiled", "lzw"],
                   help="TIFF storage: raw (uncompressed), deflate (one strip), tiled (deflate, 256x256 tiles) or "
                        "lzw (default: %(default)s)")
    p.add_argument("--kind", default="rgb", choices=["rgb", "label", "probability", "sentinel"],
                   help="rgb: class colours; label: uint8 class ids; probability: 9 float32 bands; "
                        "sentinel: uint16 reflectance (default: %(default)s)")
    p.add_argument("--bands", type=int, help="bands of --kind sentinel (4 to 13, default 10) or rgb (1 or 3)")
    p.add_argument("--planar", action="store_true", help="write bands planar-separate")
    p.add_argument("--class-maps", action="store_true", help="also write each image's class map to ClassMaps/ "
                                                             "(uint8 class ids, for dalidw tiles --target-images)")
    p.add_argument("--seed", type=int, default=0, help="the data follows from it (default: %(default)s)")
    labels_arg(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("tiles", help="build the tiles table (grid, targets, bounds, split) from region images")
    p.add_argument("image_dir", help="the images: IMAGE_DIR/LABEL/REGION.tif")
    p.add_argument("-o", "--output", default="tiles.csv", help="the CSV to write (default: %(default)s)")
    p.add_argument("--tile", nargs="+", required=True, metavar="SIZE", help="tile height and width in pixels: "
                   "H W, HxW or one size")
    p.add_argument("--stride", nargs="+", metavar="SIZE", help="pixels between tiles, H W, HxW or one size "
                   "(default: the tile size)")
    p.add_argument("--target", action="append", metavar="[NAME=]KIND:ARG",
                   help="fraction:CLASS[,CLASS...] (share of those class ids), change:CLASS[,...] (last minus "
                        "first label), mean:BAND; repeat for several columns; the first is named 'target' "
                        "(default: no target column)")
    p.add_argument("--target-images", metavar="DIR", help="folder of the images targets are computed from (same "
                                                          "layout), e.g. class maps beside RGB inputs (default: "
                                                          "IMAGE_DIR)")
    p.add_argument("--nodata", type=float, metavar="V", help="a sample value marking invalid pixels, in stored "
                                                             "units, besides NaN and the files' GDAL nodata tag "
                                                             "(default: none)")
    p.add_argument("--max-nodata", type=float, default=0.0, help="skip tiles whose share (0 to 1) of invalid "
                                                                 "pixels is larger (default: %(default)s, skip a "
                                                                 "tile with any)")
    p.add_argument("--split", help="add a split column: region (whole regions), blocks:N (blocks of NxN tiles, "
                                   "a one-tile buffer dropped between splits) or random (leaks; by name only) "
                                   "(default: no split column)")
    p.add_argument("--split-fractions", default="0.7,0.15,0.15", help="train,val[,test] shares "
                                                                      "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the split follows from it (default: %(default)s)")
    p.add_argument("--labels", type=parse_labels, help="labels in frame order (default: every folder of "
                                                         "IMAGE_DIR, in numeric order)")
    p.set_defaults(func=cmd_tiles)

    p = sub.add_parser("check", help="check a tiles CSV against its images (headers only; --decode: pixels too)")
    p.add_argument("csv", help="the tiles table (CSV): tile_id, region_id, region_coordinates, the target "
                               "column(s), optionally label_id")
    p.add_argument("image_dir", help="the images: IMAGE_DIR/LABEL/REGION.tif")
    p.add_argument("--n-channels", type=int, choices=[1, 3], help="output channels: 3 for RGB, 1 for gray (default: 3, "
                                                                  "or 1 with --num-classes; with --bands it follows "
                                                                  "them)")
    p.add_argument("--decode", action="store_true",
                   help="also check every strip and tile of every image, then decode every image once and verify it")
    channels_args(p)
    labels_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("show", help="draw one tile's sequence, or a batch, as the model sees it")
    p.add_argument("csv", help="the tiles table (CSV): tile_id, region_id, region_coordinates, the target "
                               "column(s), optionally label_id")
    p.add_argument("image_dir", help="the images: IMAGE_DIR/LABEL/REGION.tif")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tile", help="the tile_id to draw")
    which.add_argument("--batch", type=int, metavar="N", help="draw batch N (from 0) of an epoch as a grid instead")
    p.add_argument("-o", "--output", default="sample.png", help="the PNG to write (default: %(default)s)")
    p.add_argument("--dim", type=parse_dim, default=(64, 64), help="frame HEIGHTxWIDTH in pixels, or one SIZE "
                                                                   "(default: 64x64)")
    device_arg(p)
    p.add_argument("--batch-size", type=positive_int, default=16, help="with --batch: tiles per batch "
                                                                       "(default: %(default)s)")
    p.add_argument("--rows", type=positive_int, default=8, help="with --batch: at most this many tiles drawn "
                                                                "(default: %(default)s)")
    p.add_argument("--epoch", type=non_negative_int, default=0, help="with --batch: the epoch, from 0, whose shuffle "
                                                                     "order is drawn (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="with --batch: the loader's random_seed "
                                                        "(default: %(default)s)")
    p.add_argument("--no-shuffle", action="store_true", help="with --batch: table order")
    channels_args(p)
    labels_arg(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("train", help="train the urbanization ConvLSTM")
    p.add_argument("csv", help="the tiles table (CSV): tile_id, region_id, region_coordinates, the target "
                               "column(s), optionally label_id")
    p.add_argument("image_dir", help="the images: IMAGE_DIR/LABEL/REGION.tif")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs in all, those of a resumed run included "
                                                                  "(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="tiles per batch; with --strategy, the "
                                                                       "global batch (default: %(default)s)")
    p.add_argument("--dim", type=parse_dim, default=(32, 32), help="frame HEIGHTxWIDTH in pixels, or one SIZE "
                                                                   "(default: 32x32)")
    device_arg(p)
    p.add_argument("--out", default="dalidw-train", help="folder for the model, log.csv, loss.png and the "
                                                         "checkpoints (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the loader's random_seed, Keras's random seed and the "
                                                       "split by region (default: %(default)s)")
    p.add_argument("--strategy", default="none", choices=["none", "mirrored", "multiworker"],
                   help="tf.distribute: mirrored (this machine's GPUs), multiworker (machines in TF_CONFIG); "
                        "--batch-size is then the global batch (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, up to --epochs in all, with the "
                        "same options; the log is appended to")
    backend_arg(p)
    channels_args(p)
    labels_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="synth, check, train a few epochs and show a sample")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs to train (default: %(default)s)")
    device_arg(p)
    p.add_argument("--out", default="demo-out", help="folder for the model, log.csv, loss.png, sample.png and "
                                                     "the checkpoints (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the data and the training follow from it "
                                                       "(default: %(default)s)")
    backend_arg(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="run the throughput benchmark of bench/ (from a source clone)")
    p.add_argument("--quick", action="store_true", help="small data: under a minute on 2 cores")
    p.add_argument("--layout", default="tiled", choices=["raw", "deflate", "tiled"],
                   help="TIFF storage of the generated data (default: %(default)s)")
    p.add_argument("--data", help="where the generated dataset goes (default: a temporary folder)")
    p.add_argument("--out", help="where the JSON and the chart go (default: bench/results)")
    p.add_argument("--only", nargs="*", metavar="LOADER", help="loaders to run (default: all)")
    p.add_argument("--curves", action="store_true", help="the cost curves instead of the table")
    p.add_argument("--rounds", type=int, help="runs of each loader (default: 3, quick: 1)")
    p.add_argument("--seed-code", metavar="PATH", help="the original SequenceDataLoader.py, for the 'seed' row "
                                                       "(default: $DALIDW_SEED_CODE, else no 'seed' row)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; user mistakes print one message, no stack trace."""
    import faulthandler

    faulthandler.enable()  # a crash inside TensorFlow or DALI still says where Python was
    args = build_parser().parse_args(argv)
    if getattr(args, "backend", None):  # before anything imports keras (TensorFlow's import may)
        os.environ["KERAS_BACKEND"] = args.backend
    if not args.verbose:
        quiet_startup(args)
    try:
        return args.func(args)
    except (DataError, OptionError, DeviceUnavailableError) as err:  # the user's mistakes; anything else is ours
        print(f"dalidw {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output folder that cannot be made or written, a file that cannot be read
        where = f": {err.filename}" if err.filename else ""
        print(f"dalidw {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
