"""Procedural person re-identification worlds: a small, self-contained stand-in for Market-1501.

Real re-ID benchmarks are large, licensed downloads, yet the method's central claim (a network trained across
cameras latches onto camera style unless trained to be invariant to it) needs only two properties of the data:
identities that can be learnt, and cameras whose look differs more than two people do. `generate_world` draws
such a world from a seed in seconds and writes it in Market-1501's layout, so every parser, cache and training
path runs on it unchanged.

A person is a figure with stable traits: skin, hair (short or long), optional hat, upper and lower clothing
colours, a torso pattern (stripes, logo, open jacket, split), sleeves, trousers, shorts or skirt, shoes, a
shoulder bag or backpack, and body proportions. Each image adds a walking phase, framing jitter (as a person
detector's boxes wobble) and a little exposure and white-balance drift.
Each camera adds a style of its own: a background (stripes, wall and floor, gradient, window, tiles), an
illumination gradient, a brightness gain, a per-channel colour cast, gamma, saturation, blur, sensor noise, the
framing of the figure (scale, horizontal and vertical offset) and how often people walk away from it (seen from
behind: hair instead of face, backpack instead of straps, sides swapped). `style_strength` scales all of these
camera effects together: 0 gives identical cameras, 1 the full style.

Domain "a" (4 cameras) has saturated clothing, indoor backgrounds and mild camera styles; domain "b"
(5 cameras) has muted clothing, outdoor backgrounds and harsher styles, so a/b is a domain-adaptation pair.
"""

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from reid_accel.errors import ConfigError, DatasetLayoutError
from reid_accel.fileio import atomic_directory

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
DEFAULT_NUM_IDS = 80
DEFAULT_STYLE_STRENGTH = 0.5
TEST_IDS_PER_TRAIN_ID = 50 / 80
TRAIN_IMAGES_PER_CAMERA = 3
QUERY_IMAGES_PER_CAMERA = 1
GALLERY_IMAGES_PER_CAMERA = 2
DISTRACTORS_PER_CAMERA = 2
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
WORLD_FILE = "world.json"
_RENDER_CHUNK = 512
_Table = TypeVar("_Table")
_Bound = float | np.ndarray  # a scalar, or one value per image shaped (N, 1, 1)
_REFERENCE_HEIGHT = 64.0  # blur sigmas are given in pixels of a 64-pixel-high image


@dataclass(frozen=True)
class DomainSpec:
    """What the people and cameras of one domain look like; camera styles are drawn from these ranges.

    Photometric magnitudes are the full-strength values that `style_strength` scales.
    """

    num_cameras: int
    saturation: tuple[float, float]  # clothing colour saturation range
    value: tuple[float, float]  # clothing colour brightness range
    achromatic: float  # share of clothing colours that are black, grey or white
    backgrounds: tuple[str, ...]  # background kinds, dealt to the cameras in a seeded order
    background_palette: tuple[tuple[float, float, float], ...]
    cast: float  # largest per-channel colour cast (relative gain)
    gain: float  # largest |log brightness gain|
    light: float  # largest illumination gradient amplitude across the image
    gamma: float  # largest |log gamma|
    desaturation: float  # largest |log saturation gain|
    blur: float  # largest blur sigma, pixels at 64-pixel height
    noise: float  # largest sensor noise sigma, on a 0-1 scale
    back_view: float  # largest share of people a camera sees from behind


DOMAINS: dict[str, DomainSpec] = {
    "a": DomainSpec(
        num_cameras=4,
        saturation=(0.55, 0.95),
        value=(0.45, 0.95),
        achromatic=0.15,
        backgrounds=("vstripes", "gradient", "window", "wall_floor"),
        background_palette=(
            (0.82, 0.78, 0.68),
            (0.62, 0.64, 0.70),
            (0.45, 0.40, 0.36),
            (0.90, 0.90, 0.86),
            (0.55, 0.62, 0.72),
            (0.70, 0.58, 0.46),
            (0.35, 0.38, 0.42),
            (0.76, 0.70, 0.80),
        ),
        cast=0.22,
        gain=0.35,
        light=0.25,
        gamma=0.2,
        desaturation=0.3,
        blur=1.2,
        noise=0.03,
        back_view=0.6,
    ),
    "b": DomainSpec(
        num_cameras=5,
        saturation=(0.05, 0.35),
        value=(0.18, 0.85),
        achromatic=0.3,
        backgrounds=("tiles", "diagonal", "wall_floor", "gradient", "hstripes"),
        background_palette=(
            (0.36, 0.50, 0.30),
            (0.62, 0.36, 0.28),
            (0.30, 0.30, 0.32),
            (0.58, 0.72, 0.86),
            (0.74, 0.66, 0.44),
            (0.20, 0.32, 0.22),
            (0.52, 0.50, 0.46),
            (0.80, 0.56, 0.30),
        ),
        cast=0.38,
        gain=0.5,
        light=0.4,
        gamma=0.3,
        desaturation=0.5,
        blur=1.8,
        noise=0.05,
        back_view=0.9,
    ),
}

_SKIN_TONES = np.array(
    [(0.96, 0.80, 0.69), (0.90, 0.72, 0.58), (0.78, 0.57, 0.43), (0.62, 0.43, 0.30), (0.42, 0.28, 0.20)]
)
_HAIR_COLOURS = np.array(
    [(0.08, 0.07, 0.06), (0.22, 0.15, 0.10), (0.40, 0.27, 0.16), (0.78, 0.64, 0.38), (0.60, 0.60, 0.60)]
)
_SHOE_COLOURS = np.array([(0.08, 0.08, 0.08), (0.92, 0.92, 0.90), (0.38, 0.25, 0.15), (0.30, 0.32, 0.40)])
# unit vectors spanning the colour plane orthogonal to grey: a cast along them keeps brightness to first order
_CHROMA = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]]) / np.sqrt([[2.0], [6.0]])  # (2, 3)
_PATTERNS = ("plain", "hstripes", "vstripes", "logo", "open_jacket", "split")
_PATTERN_PROBS = (0.35, 0.15, 0.12, 0.14, 0.12, 0.12)
_LOWER_KINDS = ("trousers", "shorts", "skirt")
_LOWER_PROBS = (0.7, 0.15, 0.15)
_BAGS = ("none", "shoulder_bag", "backpack")
_BAG_PROBS = (0.5, 0.28, 0.22)


@dataclass(frozen=True)
class _People:
    """Traits of a set of people, one row per person; colours are (N, 3) in [0, 1]."""

    skin: np.ndarray
    hair: np.ndarray
    long_hair: np.ndarray
    hat: np.ndarray
    hat_colour: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    accent: np.ndarray
    pattern: np.ndarray  # index into _PATTERNS
    pattern_period: np.ndarray  # stripe period, figure heights
    short_sleeves: np.ndarray
    lower_kind: np.ndarray  # index into _LOWER_KINDS
    shoes: np.ndarray
    bag: np.ndarray  # index into _BAGS
    bag_side: np.ndarray  # -1 or +1: the side a shoulder bag hangs on, seen from the front
    bag_colour: np.ndarray
    width: np.ndarray  # body width factor
    torso: np.ndarray  # torso length factor
    head: np.ndarray  # head size factor
    height: np.ndarray  # body height factor


@dataclass(frozen=True)
class _Camera:
    """One camera's style at full strength."""

    background: str
    colours: np.ndarray  # (3, 3) background colours
    pattern_scale: float  # background feature size, image heights
    pattern_phase: float
    horizon: float  # wall/floor split, image heights from the top
    gain: float
    cast: np.ndarray  # (3,) per-channel gains
    light_amp: float
    light_angle: float
    gamma: float
    saturation: float
    blur: float  # sigma, pixels at 64-pixel height
    noise: float
    scale: float  # figure height / image height
    shift: float  # horizontal figure offset / image width
    foot: float  # foot line / image height
    back_view: float  # share of people seen from behind


@dataclass(frozen=True)
class _Shots:
    """Per-image variation within one camera; every field has one row per image."""

    phase: np.ndarray  # walking phase, radians
    dx: np.ndarray  # figure offset, image widths
    dy: np.ndarray  # figure offset, image heights
    zoom: np.ndarray  # figure scale factor
    brightness: np.ndarray  # exposure factor
    tint: np.ndarray  # (N, 3) white-balance drift, per-channel gains
    back: np.ndarray  # seen from behind
    bg_dx: np.ndarray  # background offset (framing of the detector box), image heights
    bg_dy: np.ndarray


def _rows(table: _Table, index: np.ndarray) -> _Table:
    """The rows `index` (repeats allowed) of every field of a dataclass of per-row arrays (`_People`, `_Shots`)."""
    return dataclasses.replace(table, **{f.name: getattr(table, f.name)[index] for f in dataclasses.fields(table)})


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for (N,) arrays in [0, 1]; returns (N, 3)."""
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * hue[:, None]) % 6.0  # (N, 3)
    return val[:, None] * (1.0 - sat[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def _clothing_colours(rng: np.random.Generator, n: int, spec: DomainSpec) -> np.ndarray:
    """(n, 3) clothing colours from the domain's palette: chromatic, or now and then black/grey/white."""
    rgb = _hsv_to_rgb(rng.random(n), rng.uniform(*spec.saturation, n), rng.uniform(*spec.value, n))
    grey = rng.choice([0.1, 0.25, 0.5, 0.85], size=n)
    achromatic = rng.random(n) < spec.achromatic
    return np.where(achromatic[:, None], grey[:, None], rgb)


def _draw_people(rng: np.random.Generator, n: int, spec: DomainSpec) -> _People:
    """Draw the stable traits of `n` people."""

    def pick(table: np.ndarray) -> np.ndarray:
        jitter = rng.normal(0.0, 0.03, (n, 3))
        return np.clip(table[rng.integers(len(table), size=n)] + jitter, 0.0, 1.0)

    return _People(
        skin=pick(_SKIN_TONES),
        hair=pick(_HAIR_COLOURS),
        long_hair=rng.random(n) < 0.35,
        hat=rng.random(n) < 0.15,
        hat_colour=_clothing_colours(rng, n, spec),
        upper=_clothing_colours(rng, n, spec),
        lower=_clothing_colours(rng, n, spec),
        accent=_clothing_colours(rng, n, spec),
        pattern=rng.choice(len(_PATTERNS), size=n, p=_PATTERN_PROBS),
        pattern_period=rng.uniform(0.045, 0.08, n),
        short_sleeves=rng.random(n) < 0.4,
        lower_kind=rng.choice(len(_LOWER_KINDS), size=n, p=_LOWER_PROBS),
        shoes=pick(_SHOE_COLOURS),
        bag=rng.choice(len(_BAGS), size=n, p=_BAG_PROBS),
        bag_side=rng.choice([-1.0, 1.0], size=n),
        bag_colour=_clothing_colours(rng, n, spec),
        width=rng.uniform(0.85, 1.15, n),
        torso=rng.uniform(0.9, 1.1, n),
        head=rng.uniform(0.9, 1.1, n),
        height=rng.uniform(0.93, 1.03, n),
    )


def _draw_cameras(rng: np.random.Generator, spec: DomainSpec) -> list[_Camera]:
    """Draw the domain's cameras at full strength, spreading casts, gains and blurs so that no two look alike."""
    c = spec.num_cameras
    kinds = rng.permutation(len(spec.backgrounds))[:c]
    cast_angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * rng.permutation(c) / c
    log_gains = rng.permutation(np.linspace(-spec.gain, spec.gain, c)) + rng.normal(0, 0.03, c)
    blurs = rng.permutation(np.linspace(0.0, spec.blur, c))
    back_views = rng.permutation(np.linspace(0.0, spec.back_view, c))
    palette = np.array(spec.background_palette)
    cameras = []
    for i in range(c):
        direction = np.array([np.cos(cast_angles[i]), np.sin(cast_angles[i])]) @ _CHROMA  # (3,)
        colours = palette[rng.choice(len(palette), size=3, replace=False)] + rng.normal(0, 0.03, (3, 3))
        cameras.append(
            _Camera(
                background=spec.backgrounds[kinds[i]],
                colours=np.clip(colours, 0.0, 1.0),
                pattern_scale=rng.uniform(0.12, 0.3),
                pattern_phase=rng.uniform(0, 2 * np.pi),
                horizon=rng.uniform(0.45, 0.75),
                gain=float(np.exp(log_gains[i])),
                cast=1.0 + spec.cast * rng.uniform(0.7, 1.0) * direction,
                light_amp=spec.light * rng.uniform(0.3, 1.0),
                light_angle=rng.uniform(0, 2 * np.pi),
                gamma=float(np.exp(spec.gamma * rng.uniform(-1, 1))),
                saturation=float(np.exp(spec.desaturation * rng.uniform(-1, 0.3))),
                blur=float(blurs[i]),
                noise=spec.noise * rng.uniform(0.3, 1.0),
                scale=float(np.exp(0.12 * rng.uniform(-1, 1))),
                shift=0.12 * rng.uniform(-1, 1),
                foot=0.03 * rng.uniform(-1, 1),
                back_view=float(back_views[i]),
            )
        )
    return cameras


def _draw_shots(rng: np.random.Generator, n: int, back_view: float, *, distractor: np.ndarray) -> _Shots:
    """Per-image jitter; distractors are framed badly (off-centre, too close), like a detector's false boxes."""
    side = rng.choice([-1.0, 1.0], size=n)
    return _Shots(
        phase=rng.uniform(0, 2 * np.pi, n),
        dx=np.where(distractor, side * rng.uniform(0.35, 0.6, n), rng.normal(0, 0.06, n)),
        dy=rng.normal(0, 0.025, n),
        zoom=np.where(distractor, rng.uniform(1.1, 1.4, n), np.exp(rng.normal(0, 0.07, n))),
        brightness=np.exp(rng.normal(0, 0.1, n)),
        tint=1.0 + rng.normal(0, 0.06, (n, 2)) @ _CHROMA,
        back=rng.random(n) < back_view,
        bg_dx=rng.uniform(-0.05, 0.05, n),
        bg_dy=rng.uniform(-0.03, 0.03, n),
    )


def _lerp(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + t (b - a) with t (..., 1) broadcast over colour channels."""
    return a + t * (b - a)


def _background(cam: _Camera, shots: _Shots, strength: float, height: int, width: int) -> np.ndarray:
    """Backgrounds broadcastable to (N, H, W, 3): the camera's pattern, faded to flat grey as `strength` goes to 0."""
    x = ((np.arange(width) + 0.5) / height)[None, None, :] + shots.bg_dx[:, None, None]  # (N, 1, W), image heights
    y = ((np.arange(height) + 0.5) / height)[None, :, None] + shots.bg_dy[:, None, None]  # (N, H, 1)
    c0, c1, c2 = cam.colours
    period = cam.pattern_scale

    def wave(coord: np.ndarray) -> np.ndarray:
        """Two-level stripes along `coord` with one-pixel soft edges."""
        return np.clip(
            0.5 + np.sin(2 * np.pi * coord / period + cam.pattern_phase) * height * period / (2 * np.pi), 0, 1
        )

    def inside(distance: np.ndarray) -> np.ndarray:
        """Pixel coverage from a signed distance (image heights) inside an edge."""
        return np.clip(distance * height + 0.5, 0, 1)

    if cam.background == "vstripes":
        image = _lerp(wave(x)[..., None], c0, c1)
    elif cam.background == "hstripes":
        image = _lerp(wave(0.6 * y)[..., None], c0, c1)
    elif cam.background == "diagonal":
        image = _lerp(wave(0.7 * (x + y))[..., None], c0, c1)
    elif cam.background == "gradient":
        image = _lerp(np.clip(y + 0.3 * x, 0, 1)[..., None], c0, c1)
    elif cam.background == "tiles":
        t = wave(x) * wave(y) + (1 - wave(x)) * (1 - wave(y))
        image = _lerp(t[..., None], c0, c1)
    elif cam.background == "window":
        left = (cam.pattern_phase / (2 * np.pi)) * width / height
        from_x, from_y = np.minimum(x - left, left + 0.25 - x), np.minimum(y - 0.15, 0.55 - y)
        pane = inside(from_x) * inside(from_y)
        frame = inside(from_x + 0.03) * inside(from_y + 0.03)
        image = _lerp(pane[..., None], _lerp(frame[..., None], c0, c2), c1)
    else:  # wall_floor
        floor = inside(y - cam.horizon)
        shade = 1.0 - 0.35 * np.clip(y - cam.horizon, 0, 1)  # floor darkens towards the camera
        image = _lerp(floor[..., None], c0, c1 * shade[..., None])
    grey = np.full(3, 0.5)
    return grey + strength * (image - grey)


class _Painter:
    """Paints shapes, given in figure coordinates, onto a batch of images with anti-aliased edges.

    Figure coordinates: v runs from 0 (top of the head) to 1 (soles), u is horizontal with the same unit and 0 on
    the body's axis; `px` is the figure height in pixels, so a distance d in figure units spans d * px pixels.
    """

    def __init__(self, canvas: np.ndarray, u: np.ndarray, v: np.ndarray, px: np.ndarray, shade: np.ndarray):
        self.canvas = canvas  # (N, H, W, 3)
        self.u = u  # (N, 1, W)
        self.v = v  # (N, H, 1)
        self.px = px  # (N, 1, 1)
        self.shade = shade  # (N, 1, W, 1): darker towards the body's outline

    def edge(self, distance: np.ndarray) -> np.ndarray:
        """Pixel coverage from a signed distance inside a shape (figure units): 0 outside, 1 inside."""
        return np.clip(distance * self.px + 0.5, 0.0, 1.0)

    def box(self, u0: _Bound, u1: _Bound, v0: _Bound, v1: _Bound) -> np.ndarray:
        """Coverage (N, H, W) of the boxes u0 < u < u1, v0 < v < v1; bounds are scalars or (N, 1, 1)."""
        return self.edge(np.minimum(self.u - u0, u1 - self.u)) * self.edge(np.minimum(self.v - v0, v1 - self.v))

    def pair(self, cu: _Bound, hu: _Bound, v0: _Bound, v1: _Bound) -> np.ndarray:
        """Coverage (N, H, W) of two boxes of half-width hu mirrored at -cu and +cu (legs, shoes, straps)."""
        return np.maximum(self.box(-cu - hu, -cu + hu, v0, v1), self.box(cu - hu, cu + hu, v0, v1))

    def ellipse(self, cu: _Bound, cv: _Bound, au: _Bound, av: _Bound) -> np.ndarray:
        """Coverage (N, H, W) of ellipses centred at (cu, cv) with half-axes (au, av)."""
        r = np.sqrt(((self.u - cu) / au) ** 2 + ((self.v - cv) / av) ** 2)
        return self.edge((1.0 - r) * np.minimum(au, av))

    def fill(self, coverage: np.ndarray, colour: np.ndarray, where: np.ndarray | None = None) -> None:
        """Paint (N, 3) colours over `coverage`, only on images where `where` (N,) holds."""
        if where is not None:
            coverage = coverage * where[:, None, None]
        target = colour[:, None, None, :] * self.shade  # (N, 1, W, 3)
        self.canvas += coverage[..., None] * (target - self.canvas)


def _paint_people(painter: _Painter, people: _People, shots: _Shots) -> None:
    """Paint one person per image, back to front."""
    p = painter
    w = people.width[:, None, None]
    stride = 0.015 * np.abs(np.sin(shots.phase))[:, None, None]
    swing = 0.02 * np.sin(shots.phase)[:, None, None]
    front = ~shots.back
    head_v, head_u, head_h = 0.075, 0.052 * people.head[:, None, None], 0.068 * people.head[:, None, None]
    shoulder = 0.15
    hip = shoulder + 0.33 * people.torso[:, None, None]
    half_top, half_hip = 0.125 * w, 0.105 * w
    pattern = people.pattern
    trousers = people.lower_kind == _LOWER_KINDS.index("trousers")
    # a shoulder bag hangs on its wearer's side: from behind it shows on the other side of the image
    side = (people.bag_side * np.where(shots.back, -1.0, 1.0))[:, None, None]

    # long hair behind the shoulders, bag behind the body
    p.fill(p.box(-head_u - 0.012, head_u + 0.012, head_v - 0.02, 0.21), people.hair, people.long_hair)
    shoulder_bag = people.bag == _BAGS.index("shoulder_bag")
    bag_u = side * (half_top + 0.065)
    p.fill(p.box(bag_u - 0.045, bag_u + 0.045, hip - 0.09, hip + 0.05), people.bag_colour, shoulder_bag)

    # neck, legs, shoes, then lower clothing over the legs
    p.fill(p.box(-0.025, 0.025, 0.11, shoulder + 0.02), people.skin)
    leg_u = 0.05 * w + stride
    p.fill(p.pair(leg_u, 0.045 * w, hip - 0.02, 0.965), np.where(trousers[:, None], people.lower, people.skin))
    p.fill(p.pair(leg_u, 0.05 * w, 0.94, 1.0), people.shoes)
    p.fill(p.box(-0.1 * w, 0.1 * w, hip - 0.03, hip + 0.06), people.lower)
    p.fill(p.pair(leg_u, 0.047 * w, hip, hip + 0.17), people.lower, people.lower_kind == _LOWER_KINDS.index("shorts"))
    flare = np.clip((p.v - hip) / 0.22, 0, 1)  # skirt widens downwards
    skirt_half = 0.105 * w + 0.05 * flare
    skirt = p.edge(np.minimum(p.u + skirt_half, skirt_half - p.u)) * p.edge(
        np.minimum(p.v - hip + 0.03, hip + 0.22 - p.v)
    )
    p.fill(skirt, people.lower, people.lower_kind == _LOWER_KINDS.index("skirt"))

    # torso (tapering from shoulders to hips) and its pattern
    taper = np.clip((p.v - shoulder) / (hip - shoulder), 0, 1)
    half = half_top + (half_hip - half_top) * taper  # (N, H, 1)
    torso = p.edge(np.minimum(p.u + half, half - p.u)) * p.edge(np.minimum(p.v - shoulder, hip + 0.01 - p.v))
    p.fill(torso, people.upper)
    period = people.pattern_period[:, None, None]
    soft = period * p.px / (2 * np.pi)  # stripe edges one pixel wide
    hstripes = np.clip(0.5 + np.sin(2 * np.pi * (p.v - shoulder) / period) * soft, 0, 1)
    vstripes = np.clip(0.5 + np.sin(2 * np.pi * p.u / period) * soft, 0, 1)
    p.fill(torso * hstripes, people.accent, pattern == _PATTERNS.index("hstripes"))
    p.fill(torso * vstripes, people.accent, pattern == _PATTERNS.index("vstripes"))
    p.fill(p.box(-0.05, 0.05, 0.2, 0.29), people.accent, (pattern == _PATTERNS.index("logo")) & front)
    p.fill(torso * p.box(-0.03, 0.03, 0.0, 1.0), people.accent, (pattern == _PATTERNS.index("open_jacket")) & front)
    split_side = np.where(shots.back, -1.0, 1.0)[:, None, None]
    p.fill(torso * p.edge(split_side * p.u), people.accent, pattern == _PATTERNS.index("split"))

    # backpack: straps from the front, the pack itself from behind
    backpack = people.bag == _BAGS.index("backpack")
    p.fill(p.pair(0.0625 * w, 0.0125 * w, shoulder, 0.33), people.bag_colour * 0.7, backpack & front)
    p.fill(p.box(-0.085 * w, 0.085 * w, 0.18, 0.41), people.bag_colour, backpack & shots.back)
    # shoulder-bag strap: a diagonal from the opposite shoulder down to the bag
    t = np.clip((p.v - shoulder) / (hip - 0.09 - shoulder), 0, 1)
    strap_u = -side * 0.08 * w + t * side * (half_top + 0.145)
    strap = p.edge(0.012 - np.abs(p.u - strap_u)) * p.edge(np.minimum(p.v - shoulder, hip - 0.09 - p.v))
    p.fill(strap, people.bag_colour * 0.7, shoulder_bag)

    # arms: sleeves, then forearms or hands in skin
    arm_u = half_top + 0.022
    arm_end = hip + 0.03
    left = p.box(-arm_u - 0.028 * w, -arm_u + 0.028 * w, shoulder + 0.01, arm_end + swing)
    right = p.box(arm_u - 0.028 * w, arm_u + 0.028 * w, shoulder + 0.01, arm_end - swing)
    arms = np.maximum(left, right)
    p.fill(arms, people.upper * 0.85)
    skin_from = np.where(people.short_sleeves[:, None, None], 0.27, arm_end - 0.04)  # (N, 1, 1)
    p.fill(arms * p.edge(p.v - skin_from), people.skin)

    # head, hair, hat
    p.fill(p.ellipse(0.0, head_v, head_u, head_h), people.skin)
    hair_to = np.where(shots.back, head_v + 0.05, head_v - 0.015)[:, None, None]
    p.fill(p.ellipse(0.0, head_v, head_u + 0.006, head_h + 0.006) * p.edge(hair_to - p.v), people.hair)
    p.fill(
        p.box(-head_u - 0.004, head_u + 0.004, head_v - head_h - 0.02, head_v - 0.02), people.hat_colour, people.hat
    )
    p.fill(p.box(-head_u - 0.02, head_u + 0.02, head_v - 0.03, head_v - 0.012), people.hat_colour * 0.8, people.hat)


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, H, W, 3) images with reflected borders."""
    if sigma < 0.2:
        return images
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):
        padded = np.pad(images, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="reflect")
        size = images.shape[axis]
        images = sum(tap * np.take(padded, np.arange(k, k + size), axis=axis) for k, tap in enumerate(taps))
    return images


def _render(
    people: _People,
    shots: _Shots,
    cam: _Camera,
    *,
    strength: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render one person per image as seen by `cam`; returns (N, H, W, 3) uint8."""
    n = len(shots.phase)
    s = strength
    canvas = np.empty((n, height, width, 3), dtype=np.float32)
    canvas[...] = _background(cam, shots, s, height, width)
    # framing: figure height in pixels, horizontal centre and foot line, each pulled towards neutral by strength
    px = (0.84 * cam.scale**s * people.height * shots.zoom * height)[:, None, None]  # (N, 1, 1)
    centre = ((0.5 + s * cam.shift + shots.dx) * width)[:, None, None]
    foot = ((0.96 + s * cam.foot + shots.dy) * height)[:, None, None]
    u = ((np.arange(width) + 0.5)[None, None, :] - centre) / px  # (N, 1, W)
    v = ((np.arange(height) + 0.5)[None, :, None] - (foot - px)) / px  # (N, H, 1)
    shade = (1.0 - 0.22 * np.clip(np.abs(u) / (0.16 * people.width[:, None, None]), 0, 1) ** 2)[..., None]
    painter = _Painter(canvas, u, v, px, shade)
    # soft ground shadow under the feet
    canvas *= 1.0 - 0.3 * painter.ellipse(0.0, 1.0, 0.2 * people.width[:, None, None], 0.03)[..., None]
    _paint_people(painter, people, shots)

    # camera response: illumination gradient, exposure and colour cast, gamma, saturation, optics, sensor
    xn = ((np.arange(width) + 0.5) / width * 2 - 1)[None, :]  # (1, W)
    yn = ((np.arange(height) + 0.5) / height * 2 - 1)[:, None]  # (H, 1)
    light = 1.0 + s * cam.light_amp * (np.cos(cam.light_angle) * xn + np.sin(cam.light_angle) * yn)  # (H, W)
    gain = cam.gain**s * shots.brightness  # (N,)
    cast = (1.0 + s * (cam.cast - 1.0)) * shots.tint  # (N, 3)
    images = canvas * (gain[:, None, None, None] * light[None, :, :, None] * cast[:, None, None, :]).astype(np.float32)
    images = np.clip(images, 0.0, 1.0) ** np.float32(cam.gamma**s)
    grey = images.mean(axis=-1, keepdims=True)
    images = grey + np.float32(cam.saturation**s) * (images - grey)
    images = _gaussian_blur(images, s * cam.blur * height / _REFERENCE_HEIGHT)
    images += np.float32(s * cam.noise) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class _Layout:
    """Every image of a world, one row each, in file-name order within a split."""

    split: np.ndarray  # index into SPLIT_DIRS
    pid: np.ndarray  # 1-based identity, 0 for distractors
    person: np.ndarray  # row in the people table
    camera: np.ndarray  # 0-based
    frame: np.ndarray


def _layout(num_ids: int, num_test_ids: int, num_cameras: int) -> _Layout:
    """Train ids 1..num_ids, then disjoint test ids seen once as query and twice in the gallery per camera."""
    cams = np.arange(num_cameras)

    def block(split: int, first: int, count: int, per_camera: int) -> tuple[np.ndarray, ...]:
        people = np.repeat(np.arange(first, first + count), num_cameras * per_camera)
        camera = np.tile(np.repeat(cams, per_camera), count)
        return np.full(len(people), split), people + 1, people, camera

    blocks = [
        block(0, 0, num_ids, TRAIN_IMAGES_PER_CAMERA),
        block(1, num_ids, num_test_ids, QUERY_IMAGES_PER_CAMERA),
        block(2, num_ids, num_test_ids, GALLERY_IMAGES_PER_CAMERA),
    ]
    distractors = num_ids + num_test_ids + np.arange(num_cameras * DISTRACTORS_PER_CAMERA)
    blocks.append(
        (
            np.full(len(distractors), 2),
            np.zeros_like(distractors),
            distractors,
            np.repeat(cams, DISTRACTORS_PER_CAMERA),
        )
    )
    split, pid, person, camera = (np.concatenate(column) for column in zip(*blocks, strict=True))
    return _Layout(split=split, pid=pid, person=person, camera=camera, frame=np.arange(1, len(pid) + 1))


def _resolve_parameters(
    domain: str, seed: int, num_ids: int | None, height: int, width: int, style_strength: float | None
) -> dict:
    """Validate the arguments of `generate_world` and fill in defaults; the result is what world.json records."""
    if domain not in DOMAINS:
        raise ConfigError(f"synthetic domain {domain!r} is unknown; expected one of {sorted(DOMAINS)}")
    num_ids = DEFAULT_NUM_IDS if num_ids is None else num_ids
    strength = DEFAULT_STYLE_STRENGTH if style_strength is None else float(style_strength)
    if seed < 0:
        raise ConfigError(f"synthetic world seed={seed} must be >= 0")
    if num_ids < 2:
        raise ConfigError(f"synthetic world num_ids={num_ids} must be >= 2")
    if height < 16 or width < 8:
        raise ConfigError(f"synthetic world image size {height}x{width} is too small; expected at least 16x8")
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"synthetic world style_strength={strength} must lie in [0, 1]")
    return {
        "domain": domain,
        "seed": int(seed),
        "num_ids": int(num_ids),
        "num_test_ids": max(2, round(num_ids * TEST_IDS_PER_TRAIN_ID)),
        "height": int(height),
        "width": int(width),
        "style_strength": strength,
    }


def _is_complete(root: Path, params: dict) -> bool:
    """Whether `root` already holds this world; an empty or missing folder is not, anything else is an error."""
    if not root.exists():
        return False
    world_file = root / WORLD_FILE
    if not world_file.is_file():
        if root.is_dir() and not any(root.iterdir()):
            return False
        raise DatasetLayoutError(
            f"{root} exists and is not a synthetic world (no {WORLD_FILE}); choose another folder"
        )
    try:
        recorded = json.loads(world_file.read_text())
    except json.JSONDecodeError as error:
        raise DatasetLayoutError(f"{world_file} is not valid JSON ({error}); delete {root} to regenerate it") from None
    if recorded.get("version") != GENERATOR_VERSION or recorded.get("parameters") != params:
        raise DatasetLayoutError(
            f"{root} holds another synthetic world ({recorded.get('parameters')}, version {recorded.get('version')}),"
            f" not {params} (version {GENERATOR_VERSION}); choose another folder or delete it"
        )
    return True


def _write_world(folder: Path, params: dict) -> dict[str, int]:
    """Render every image of the world into `folder`; returns the image count per split folder."""
    spec = DOMAINS[params["domain"]]
    height, width, strength = params["height"], params["width"], params["style_strength"]
    layout = _layout(params["num_ids"], params["num_test_ids"], spec.num_cameras)
    people_seq, camera_seq, shots_seq = np.random.SeedSequence(
        [params["seed"], list(DOMAINS).index(params["domain"])]
    ).spawn(3)
    people = _draw_people(np.random.default_rng(people_seq), int(layout.person.max()) + 1, spec)
    cameras = _draw_cameras(np.random.default_rng(camera_seq), spec)
    for split_dir in SPLIT_DIRS:
        (folder / split_dir).mkdir()
    for cam_index, (cam, seq) in enumerate(zip(cameras, shots_seq.spawn(len(cameras)), strict=True)):
        rng = np.random.default_rng(seq)
        rows = np.flatnonzero(layout.camera == cam_index)
        shots = _draw_shots(rng, len(rows), strength * cam.back_view, distractor=layout.pid[rows] == 0)
        for start in range(0, len(rows), _RENDER_CHUNK):
            chunk = np.arange(start, min(start + _RENDER_CHUNK, len(rows)))
            images = _render(
                _rows(people, layout.person[rows[chunk]]),
                _rows(shots, chunk),
                cam,
                strength=strength,
                height=height,
                width=width,
                rng=rng,
            )
            for row, image in zip(rows[chunk], images, strict=True):
                name = f"{layout.pid[row]:04d}_c{cam_index + 1}s1_{layout.frame[row]:06d}_00.png"
                Image.fromarray(image).save(folder / SPLIT_DIRS[layout.split[row]] / name, format="PNG")
    return {split_dir: int((layout.split == i).sum()) for i, split_dir in enumerate(SPLIT_DIRS)}


def generate_world(
    root: str | os.PathLike,
    *,
    domain: str,
    seed: int = 0,
    num_ids: int | None = None,
    height: int = 64,
    width: int = 32,
    style_strength: float | None = None,
) -> Path:
    """Write a synthetic re-ID world in Market-1501 layout, or reuse the one already there.

    `root` receives `bounding_box_train/` (`num_ids` identities x cameras x 3 images), `query/` (one image per
    test identity and camera), `bounding_box_test/` (two per test identity and camera, plus two badly framed
    distractors with pid 0 per camera) and `world.json` (generator version, parameters, counts). Files are
    named `{pid:04d}_c{cam}s1_{frame:06d}_00.png`; test identities (`round(num_ids * 5 / 8)`, at least 2)
    follow the train ones, so the splits share no pid. The same arguments give the same bytes.

    The world is rendered into a hidden sibling folder and renamed into place, so an interrupted run leaves no
    half-written `root` and concurrent runs are safe: the first rename wins and the others reuse its result.

    Args:
        root: folder to create; an existing complete world with the same parameters is returned untouched.
        domain: "a" (4 cameras, saturated clothing, mild camera styles) or "b" (5 cameras, muted clothing,
            harsh styles).
        seed: seeds people, cameras and images.
        num_ids: training identities (default 80).
        height: image height in pixels.
        width: image width in pixels.
        style_strength: 0 makes all cameras alike, 1 gives each its full style (default `DEFAULT_STYLE_STRENGTH`).

    Returns:
        `root` as a Path.

    Raises:
        ConfigError: an argument is out of range.
        DatasetLayoutError: `root` exists but holds something else.
    """
    root = Path(root)
    params = _resolve_parameters(domain, seed, num_ids, height, width, style_strength)
    if _is_complete(root, params):
        logger.info("Reusing the synthetic world at %s", root)
        return root
    start = time.perf_counter()
    try:
        with atomic_directory(root) as staging:
            counts = _write_world(staging, params)
            record = {
                "generator": __name__,
                "version": GENERATOR_VERSION,
                "parameters": params,
                "num_cameras": DOMAINS[domain].num_cameras,
                "counts": counts,
            }
            (staging / WORLD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    except FileExistsError:
        # another process renamed the same world into place first
        if not _is_complete(root, params):
            raise
        logger.info("Reusing the synthetic world another process wrote to %s", root)
        return root
    logger.info("Wrote synthetic world %s (%s) to %s in %.1f s", domain, counts, root, time.perf_counter() - start)
    return root
