"""Procedural street scenes: the data of the offline segmentation benchmark (``streets``).

Not GTA5, Cityscapes or ACDC, and not a stand-in for them: a small, fully reproducible
segmentation task that needs no download, so the segmentation protocols and methods run
end to end on a fresh offline machine. A scene (64 x 128 pixels) is a road in
perspective towards a vanishing point, sidewalks beside it, terrain/vegetation beyond,
buildings and trees on the horizon, sky above, cars on the road and people on the
sidewalks. Classes (:data:`CLASSES`): road, sidewalk, building, vegetation, sky, car, person.

Rendering styles:

* ``synthetic`` (the source domain): flat, saturated class colours with light noise;
* ``normal`` (the target daytime look): a different palette, textures and slight blur;
* adverse target conditions on top of ``normal``: ``night`` (dark, blue, noisy, lights),
  ``fog`` (depth-dependent haze), ``rain`` (dim, low contrast, streaks, blur), ``snow``
  (bright, desaturated, flakes, snow-covered ground).

Every target image comes with a *reference*: the same place under ``normal`` conditions,
shifted by a few pixels and with fresh noise (as ACDC pairs an adverse image with a
GPS-matched, not pixel-aligned, normal-condition image). Everything is a pure function of
``(n, seed, style)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES: tuple[str, ...] = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person")
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON = range(len(CLASSES))
HEIGHT, WIDTH = 64, 128
CONDITIONS: tuple[str, ...] = ("night", "fog", "rain", "snow")

# mean RGB per class of the two base palettes (0..255)
SYNTHETIC_PALETTE = np.array([(110, 60, 130), (230, 50, 220), (80, 80, 80), (60, 160, 40),
                              (70, 140, 230), (20, 20, 200), (220, 30, 50)], dtype=np.float32)
NORMAL_PALETTE = np.array([(95, 90, 100), (160, 150, 150), (120, 105, 95), (75, 115, 55),
                           (170, 195, 225), (60, 70, 120), (150, 60, 60)], dtype=np.float32)


@dataclass
class Layout:
    """One scene's geometry: the label map and a depth map (0 near .. 1 at the horizon)."""

    labels: np.ndarray  # H x W uint8 class ids
    depth: np.ndarray  # H x W float32


def _layout(rng: np.random.Generator) -> Layout:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    horizon = rng.uniform(22, 30)
    vanish = rng.uniform(44, 84)
    labels = np.full((HEIGHT, WIDTH), SKY, dtype=np.uint8)
    below = np.clip(yy - horizon, 0, None)
    offset = np.abs(xx - vanish)
    road_slope, walk_slope = rng.uniform(1.2, 2.0), rng.uniform(0.4, 0.8)
    ground = yy >= horizon
    labels[ground] = VEGETATION
    labels[ground & (offset <= below * (road_slope + walk_slope))] = SIDEWALK
    labels[ground & (offset <= below * road_slope)] = ROAD
    # skyline: building blocks with gaps, trees in front of some
    x = 0.0
    while x < WIDTH:
        width = rng.uniform(8, 26)
        if rng.random() < 0.8:
            top = horizon - rng.uniform(6, 20)
            labels[(xx >= x) & (xx < x + width) & (yy >= top) & (yy < horizon)] = BUILDING
        x += width
    for _ in range(rng.integers(1, 5)):
        cx, cy, r = rng.uniform(0, WIDTH), horizon - rng.uniform(1, 8), rng.uniform(3, 7)
        labels[((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & (yy < horizon + 1)] = VEGETATION
    # cars on the road, people on the sidewalks; size grows with distance below the horizon
    for _ in range(rng.integers(0, 4)):
        base = rng.uniform(horizon + 6, HEIGHT + 4)
        scale = (base - horizon) / (HEIGHT - horizon)
        lane = rng.uniform(-0.8, 0.8) * (base - horizon) * road_slope
        w, h = 28 * scale, 14 * scale
        cx = vanish + lane
        labels[(np.abs(xx - cx) <= w / 2) & (yy <= base) & (yy >= base - h)] = CAR
    for _ in range(rng.integers(0, 4)):
        base = rng.uniform(horizon + 6, HEIGHT + 2)
        scale = (base - horizon) / (HEIGHT - horizon)
        side = rng.choice((-1.0, 1.0))
        cx = vanish + side * (base - horizon) * (road_slope + walk_slope / 2)
        w, h = max(2.0, 5 * scale), 22 * scale
        body = (np.abs(xx - cx) <= w / 2) & (yy <= base) & (yy >= base - h)
        head = (xx - cx) ** 2 + (yy - (base - h - w / 2)) ** 2 <= (w / 1.6) ** 2
        labels[body | head] = PERSON
    depth = np.where(ground, horizon / np.maximum(yy, horizon + 0.5), 1.0).astype(np.float32)
    depth = np.clip((depth - horizon / HEIGHT) / (1 - horizon / HEIGHT), 0, 1)
    return Layout(labels, depth)


def _paint(layout: Layout, palette: np.ndarray, rng: np.random.Generator, jitter: float, noise: float,
           texture: float) -> np.ndarray:
    colours = palette + rng.normal(0, jitter, size=palette.shape)
    image = colours[layout.labels]
    # per-class low-frequency texture (coarse noise upsampled) plus pixel noise
    coarse = rng.normal(0, texture, size=(HEIGHT // 8, WIDTH // 8, 1)).astype(np.float32)
    image = image + np.kron(coarse, np.ones((8, 8, 1), np.float32))
    image = image + rng.normal(0, noise, size=image.shape)
    return image.astype(np.float32)


def _blur(image: np.ndarray) -> np.ndarray:
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] + 2 * image) / 6


def _normal(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    return _blur(_paint(layout, NORMAL_PALETTE, rng, jitter=12, noise=6, texture=10))


def _night(image, layout, rng):
    dark = 255 * (np.clip(image, 0, 255) / 255) ** 2.2 * 0.35 * np.array([0.7, 0.8, 1.2], np.float32)
    lights = np.zeros(image.shape[:2], np.float32)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(HEIGHT * 0.3, HEIGHT)
        lights += 180 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * rng.uniform(2, 5) ** 2))
    return dark + lights[..., None] * np.array([1.0, 0.9, 0.6], np.float32) + rng.normal(0, 8, image.shape)


def _fog(image, layout, rng):
    transmission = np.exp(-rng.uniform(2.0, 3.0) * (0.25 + layout.depth))[..., None]
    airlight = rng.uniform(170, 210)
    return image * transmission + airlight * (1 - transmission)


def _rain(image, layout, rng):
    dim = 0.6 * image + 0.4 * image.mean() * 0.7
    streaks = np.zeros(image.shape[:2], np.float32)
    for _ in range(rng.integers(80, 140)):
        x, y, length = rng.integers(0, WIDTH), rng.integers(0, HEIGHT), rng.integers(4, 10)
        rows = np.clip(y + np.arange(length), 0, HEIGHT - 1)
        cols = np.clip(x + np.arange(length) // 3, 0, WIDTH - 1)
        streaks[rows, cols] = 60
    return _blur(_blur(dim * np.array([0.9, 0.95, 1.05], np.float32))) + streaks[..., None]


def _snow(image, layout, rng):
    grey = image.mean(axis=2, keepdims=True)
    pale = 0.45 * image + 0.55 * grey + 60
    ground = layout.labels[..., None] != SKY
    cover = ground & (rng.random((HEIGHT // 4, WIDTH // 4, 1)).repeat(4, 0).repeat(4, 1) < 0.35)
    pale = np.where(cover, 0.3 * pale + 0.7 * 235, pale)
    flakes = (rng.random(image.shape[:2]) < 0.04)[..., None] * 120.0
    return pale + flakes


ADVERSE = {"night": _night, "fog": _fog, "rain": _rain, "snow": _snow}


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, rng: np.random.Generator, max_shift: int = 3) -> np.ndarray:
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    padded = np.pad(image, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    return padded[max_shift + dy: max_shift + dy + HEIGHT, max_shift + dx: max_shift + dx + WIDTH]


def generate(n: int, seed: int, style: str = "synthetic") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``n`` scenes of one style: images (uint8 N x 64 x 128 x 3), labels (uint8 N x 64 x 128)
    and, for every target style, normal-condition references (``None`` for ``synthetic``)."""
    if style not in ("synthetic", "normal", *CONDITIONS):
        raise ValueError(f"unknown street-scene style {style!r}")
    rng = np.random.default_rng([seed, len(style), sum(map(ord, style))])
    images = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    labels = np.empty((n, HEIGHT, WIDTH), np.uint8)
    references = None if style == "synthetic" else np.empty_like(images)
    for i in range(n):
        layout = _layout(rng)
        labels[i] = layout.labels
        if style == "synthetic":
            images[i] = _to_uint8(_paint(layout, SYNTHETIC_PALETTE, rng, jitter=25, noise=5, texture=6))
            continue
        base = _normal(layout, rng)
        images[i] = _to_uint8(ADVERSE[style](base, layout, rng) if style in ADVERSE else base)
        if references is not None:
            references[i] = _shift(_to_uint8(_normal(layout, rng)), rng)
    return images, labels, references
