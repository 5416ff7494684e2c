"""``medvlp wsi tile``: tissue tiles of whole-slide images to HDF5 coordinate files (thin over :mod:`medvlp.io.wsi`).

Every slide is attempted: a slide that cannot be tiled (unreadable, no trustworthy microns per pixel)
prints one line on stderr and the others are still tiled; the command then exits 2 (partial results;
1 when no slide could be tiled), so a script sees the failure without losing the work done on the good
slides. ``wsi zeroshot`` and ``zeroshot`` use the same exit codes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from medvlp.errors import ConfigError, MedvlpError

app = typer.Typer(no_args_is_help=True)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _parse_mpp(value: str | None) -> tuple[float | None, dict[str, float] | None]:
    """``--mpp``: one number for every slide, or a CSV table ``slide,mpp``."""
    if value is None:
        return None, None
    try:
        return float(value), None
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--mpp {value!r} is neither a number nor a CSV file with columns slide,mpp")
    from medvlp.io.wsi import load_mpp_table

    return None, load_mpp_table(path)


def _output_names(slides: list[Path]) -> list[str]:
    """``<stem>.h5`` per slide; refuse two slides that would overwrite each other's file."""
    names = [f"{p.stem}.h5" for p in slides]
    seen: dict[str, Path] = {}
    for name, slide in zip(names, slides, strict=True):
        if name in seen and seen[name].resolve() != slide.resolve():
            raise ConfigError(
                f"{seen[name]} and {slide} would both write {name}; tile them into different --out folders"
            )
        seen[name] = slide
    return names


@app.command(
    "tile",
    help="Tile slides at a target resolution, keeping tissue; one <stem>.h5 of coordinates per slide. "
    "A slide that fails prints one line on stderr and the others are still tiled; the exit code is then 2 "
    "(1 when every slide failed).",
)
def tile(
    slides: Annotated[
        list[Path], typer.Argument(help="Slide files (SVS, pyramidal TIFF, NDPI, MRXS, DICOM WSI).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the <slide stem>.h5 files.")],
    mpp: Annotated[
        str | None,
        typer.Option(
            help="Level-0 microns per pixel when a slide's own value is missing or wrong, "
            "or a CSV file with columns slide,mpp."
        ),
    ] = None,
    size: Annotated[int, typer.Option(help="Tile size in pixels at the target resolution.")] = 256,
    target_mpp: Annotated[
        float, typer.Option(help="Microns per pixel of the tiles (0.5 = 20x, 0.25 = 40x).")
    ] = 0.5,
    tissue_fraction: Annotated[
        float, typer.Option(help="Keep tiles whose footprint is at least this fraction tissue (0 keeps all).")
    ] = 0.5,
    saturation_floor: Annotated[
        float, typer.Option(help="Lowest saturation threshold (0-255) of the tissue mask.")
    ] = 8.0,
    preview: Annotated[
        bool, typer.Option(help="Also write <slide stem>_tiles.png: the thumbnail with the kept tiles drawn.")
    ] = False,
) -> None:
    """Tile each slide; print one summary line per slide and a total."""
    from medvlp.io.wsi import draw_tiles, lookup_mpp, open_slide, tile_coords, write_tiles_h5

    mpp_value, mpp_table = _parse_mpp(mpp)  # a bad argument raises: the CLI's handler prints one line, exit 1
    names = _output_names(slides)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n_ok, n_tiles, failed = 0, 0, []
    for slide_path, name in zip(slides, names, strict=True):
        slide_mpp = mpp_value if mpp_table is None else lookup_mpp(mpp_table, slide_path)
        try:
            with open_slide(slide_path) as slide:
                result = tile_coords(
                    slide,
                    target_mpp=target_mpp,
                    size=size,
                    tissue_fraction=tissue_fraction,
                    mpp=slide_mpp,
                    saturation_floor=saturation_floor,
                )
                h5 = write_tiles_h5(out / name, result)
                if preview:
                    thumb = slide.get_thumbnail(1024)
                    draw_tiles(result, thumb).save(out / f"{slide_path.stem}_tiles.png")
        except MedvlpError as e:
            failed.append(slide_path)
            typer.echo(f"medvlp: error: {_one_line(e)}", err=True)  # this slide failed; the others go on
            continue
        n_ok += 1
        n_tiles += len(result)
        typer.echo(
            f"{slide_path.name}: {len(result)} tiles of {result.settings['grid_tiles']}, "
            f"{result.patch_size} px at {result.target_mpp:g} µm/px "
            f"(read {result.read_size} px at level {result.read_level}; level-0 {result.level0_mpp:g} µm/px "
            f"from {result.mpp_source}) -> {h5}"
        )
    seconds = time.perf_counter() - start
    typer.echo(f"tiled {n_ok} of {len(slides)} slides: {n_tiles} tiles in {seconds:.1f} s")
    if failed:
        typer.echo(f"medvlp: {len(failed)} of {len(slides)} slides failed", err=True)
        raise typer.Exit(2 if n_ok else 1)


# `medvlp wsi zeroshot` (slide-level zero-shot with cached tile embeddings and heatmaps)
from medvlp.cli import wsi_zeroshot  # noqa: E402

wsi_zeroshot.register(app)
