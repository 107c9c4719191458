"""The demo specimen dataset: procedurally drawn plankton and aquatic invertebrates under a microscope, offline."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CANVAS = 256  # drawing resolution; images are saved at half of it (antialiasing by downsampling)
IMAGE_SIZE = 128


@dataclass(frozen=True)
class DemoClass:
    """One demo taxon: how many images, where it sits in the taxonomy, how to draw it."""

    name: str  # genus or family, the label
    kingdom: str  # broadest taxon (Catalogue of Life: diatoms, ciliates and dinoflagellates are Chromista)
    phylum: str
    order: str
    family: str  # finest taxon above the label (a family-level label is its own family)
    n_images: int  # images in the dataset (imbalance is deliberate)
    draw: str  # name of the drawing function


DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass("Daphnia", "Animalia", "Arthropoda", "Anomopoda", "Daphniidae", 340, "daphnia"),
    DemoClass("Navicula", "Chromista", "Bacillariophyta", "Naviculales", "Naviculaceae", 250, "navicula"),
    DemoClass("Calanus", "Animalia", "Arthropoda", "Calanoida", "Calanidae", 190, "copepod"),
    DemoClass("Paramecium", "Chromista", "Ciliophora", "Peniculida", "Parameciidae", 140, "paramecium"),
    DemoClass("Chironomidae", "Animalia", "Arthropoda", "Diptera", "Chironomidae", 110, "chironomid"),
    DemoClass("Coscinodiscus", "Chromista", "Bacillariophyta", "Coscinodiscales", "Coscinodiscaceae", 80,
              "coscinodiscus"),
    DemoClass("Volvox", "Plantae", "Chlorophyta", "Volvocales", "Volvocaceae", 50, "volvox"),
    DemoClass("Baetidae", "Animalia", "Arthropoda", "Ephemeroptera", "Baetidae", 30, "mayfly"),
    DemoClass("Ceratium", "Chromista", "Myzozoa", "Gonyaulacales", "Ceratiaceae", 16, "ceratium"),
)
FLIP_FRACTION = 0.05


@dataclass(frozen=True)
class DemoSample:
    """One generated image and what it really is."""

    path: str  # relative to the dataset root
    true_label: str  # what was drawn
    label: str  # what the manifest says (differs for flipped samples)
    specimen_id: str  # the individual the image shows
    kingdom: str
    phylum: str
    order: str
    family: str


def generate_demo_dataset(out_dir: str | Path, *, seed: int = 0, scale: float = 1.0) -> list[DemoSample]:
    """Draw the dataset into `out_dir/images/<class>/`, write `manifest.csv` and `flipped_labels.csv`.

    `scale` multiplies every class's image count (tests use a smaller dataset). Several images (2-5) show one
    specimen from different angles; about 5% of specimens carry a wrong label, recorded in `flipped_labels.csv`.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    samples: list[DemoSample] = []
    for taxon in DEMO_CLASSES:
        (out_dir / "images" / taxon.name).mkdir(parents=True, exist_ok=True)
        target = max(4, round(taxon.n_images * scale))
        specimen = 0
        made = 0
        while made < target:
            specimen += 1
            specimen_id = f"{taxon.name[:4].upper()}-{specimen:04d}"
            traits = _specimen_traits(rng)
            for view in range(min(int(rng.integers(2, 6)), target - made)):
                rel = f"images/{taxon.name}/{specimen_id}_{view + 1}.jpg"
                image = draw_specimen(taxon.draw, traits, rng)
                image.save(out_dir / rel, quality=90)
                samples.append(DemoSample(rel, taxon.name, taxon.name, specimen_id, taxon.kingdom, taxon.phylum,
                                          taxon.order, taxon.family))
                made += 1
    samples = _flip_labels(samples, rng)
    _write_manifest(out_dir, samples)
    return samples


def _flip_labels(samples: list[DemoSample], rng: np.random.Generator) -> list[DemoSample]:
    """Give ~5% of images, whole specimens at a time, another class's label (chosen by that class's frequency)."""
    by_taxon = {t.name: t for t in DEMO_CLASSES}
    specimens = sorted({s.specimen_id for s in samples})
    order = rng.permutation(len(specimens))
    budget = round(FLIP_FRACTION * len(samples))
    sizes = {t.name: t.n_images for t in DEMO_CLASSES}
    flipped: dict[str, str] = {}
    count = 0
    per_specimen = {sid: [s for s in samples if s.specimen_id == sid] for sid in specimens}
    for index in order:
        if count >= budget:
            break
        sid = specimens[index]
        true = per_specimen[sid][0].true_label
        if sizes[true] < 40:  # keep the rarest classes' few images true, as a curator would have checked them
            continue
        others = [name for name in sizes if name != true]
        weights = np.array([sizes[n] for n in others], dtype=float)
        flipped[sid] = others[int(rng.choice(len(others), p=weights / weights.sum()))]
        count += len(per_specimen[sid])
    result = []
    for s in samples:
        if s.specimen_id in flipped:
            given = by_taxon[flipped[s.specimen_id]]
            s = DemoSample(s.path, s.true_label, given.name, s.specimen_id, given.kingdom, given.phylum, given.order,
                           given.family)
        result.append(s)
    return result


def _write_manifest(out_dir: Path, samples: list[DemoSample]) -> None:
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "specimen_id", "kingdom", "phylum", "order", "family"])
        for s in samples:
            writer.writerow([s.path, s.label, s.specimen_id, s.kingdom, s.phylum, s.order, s.family])
    with open(out_dir / "flipped_labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "true_label", "given_label"])
        for s in samples:
            if s.label != s.true_label:
                writer.writerow([s.path, s.true_label, s.label])


# --- drawing -------------------------------------------------------------------------------------------------------

def _specimen_traits(rng: np.random.Generator) -> dict:
    """What stays the same across one specimen's images: size, proportions, pigment, features."""
    return {
        "size": float(rng.uniform(0.8, 1.15)),
        "aspect": float(rng.uniform(0.85, 1.15)),
        "tint": rng.uniform(-18, 18, size=3),
        "count": int(rng.integers(4, 9)),
        "seed": int(rng.integers(0, 2**31)),
    }


def draw_specimen(kind: str, traits: dict, rng: np.random.Generator) -> Image.Image:
    """One image of a specimen: a microscope background, the organism at a random pose, optics blur and noise."""
    background = _background(rng)
    layer = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    shape_rng = np.random.default_rng(traits["seed"])  # the specimen's own anatomy is the same in every view
    _DRAWERS[kind](draw, traits, shape_rng)
    angle = float(rng.uniform(0, 360))
    layer = layer.rotate(angle, resample=Image.BICUBIC, center=(CANVAS / 2, CANVAS / 2))
    shift = tuple(int(v) for v in rng.integers(-18, 19, size=2))
    background.alpha_composite(layer, dest=shift) if min(shift) >= 0 else background.alpha_composite(
        layer.transform(layer.size, Image.AFFINE, (1, 0, -shift[0], 0, 1, -shift[1])))
    image = background.convert("RGB").filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.8))))
    array = np.asarray(image, dtype=np.float32) + rng.normal(0, 4.0, size=(CANVAS, CANVAS, 3))
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)


def _background(rng: np.random.Generator) -> Image.Image:
    base = np.array([226, 224, 212], dtype=np.float32) + rng.uniform(-14, 14, size=3)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS
    gradient = (rng.uniform(-20, 20) * (xx - 0.5) + rng.uniform(-20, 20) * (yy - 0.5))[..., None]
    vignette = -40 * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2)[..., None])
    array = np.clip(base + gradient + vignette, 0, 255).astype(np.uint8)
    image = Image.fromarray(array).convert("RGBA")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 20))):  # detritus shared by every class
        x, y, r = rng.uniform(0, CANVAS), rng.uniform(0, CANVAS), rng.uniform(1, 5)
        grey = int(rng.uniform(120, 190))
        draw.ellipse([x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r], fill=(grey, grey - 10, grey - 25, 200))
    return image


def _colour(rgb: tuple[int, int, int], traits: dict, alpha: int = 255) -> tuple[int, int, int, int]:
    r, g, b = (int(np.clip(c + t, 0, 255)) for c, t in zip(rgb, traits["tint"], strict=True))
    return (r, g, b, alpha)


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, **kwargs) -> None:
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], **kwargs)


def _daphnia(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    _ellipse(draw, c, c + 5, 52 * s, 68 * s * traits["aspect"], fill=_colour((196, 170, 120), traits, 230),
             outline=_colour((120, 96, 60), traits), width=3)
    draw.line([c + 10 * s, c + 70 * s, c + 25 * s, c + 100 * s], fill=_colour((120, 96, 60), traits), width=4)  # spine
    _ellipse(draw, c, c - 52 * s, 11 * s, 11 * s, fill=(25, 25, 30, 255))  # compound eye
    for side in (-1, 1):  # branched antennae
        x0, y0 = c + side * 18 * s, c - 40 * s
        x1, y1 = c + side * 62 * s, c - 70 * s
        draw.line([x0, y0, x1, y1], fill=_colour((130, 105, 70), traits), width=4)
        for k in range(3):
            draw.line([x1, y1, x1 + side * 20 * s, y1 - 12 + 14 * k], fill=_colour((130, 105, 70), traits), width=2)
    for k in range(traits["count"] % 5 + 2):  # eggs in the brood pouch
        _ellipse(draw, c - 14 * s + 9 * k * s % 30, c + 15 * s + (k % 2) * 10, 6 * s, 6 * s,
                 fill=_colour((90, 120, 70), traits))


def _navicula(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    half_len, half_w = 85 * s, 20 * s * traits["aspect"]
    points = [(c + half_len * math.cos(t), c + half_w * math.sin(t) * abs(math.sin(t)) ** -0.3 if math.sin(t) else c)
              for t in np.linspace(0, 2 * math.pi, 60)]
    draw.polygon(points, fill=_colour((205, 185, 120), traits, 230), outline=_colour((130, 110, 50), traits), width=3)
    for x in np.arange(c - half_len + 14, c + half_len - 12, 6):  # transverse striae
        draw.line([x, c - half_w * 0.75, x, c + half_w * 0.75], fill=_colour((150, 130, 70), traits), width=1)
    draw.line([c - half_len + 10, c, c + half_len - 10, c], fill=_colour((120, 100, 45), traits), width=2)  # raphe
    _ellipse(draw, c, c, 6, 6, fill=_colour((120, 100, 45), traits))  # central nodule


def _copepod(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    _ellipse(draw, c, c - 20 * s, 26 * s * traits["aspect"], 50 * s, fill=_colour((200, 120, 90), traits, 235),
             outline=_colour((140, 70, 50), traits), width=3)
    for k in range(4):  # segmented urosome
        _ellipse(draw, c, c + (38 + 13 * k) * s, (10 - k) * s, 7 * s, fill=_colour((190, 115, 85), traits))
    for side in (-1, 1):  # long first antennae sweeping back
        draw.line([c, c - 62 * s, c + side * 95 * s, c - 35 * s], fill=_colour((140, 70, 50), traits), width=3)
        draw.line([c, c + 88 * s, c + side * 18 * s, c + 112 * s], fill=_colour((140, 70, 50), traits), width=2)
    _ellipse(draw, c, c - 58 * s, 5 * s, 5 * s, fill=(160, 20, 20, 255))  # naupliar eye


def _paramecium(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    rx, ry = 34 * s * traits["aspect"], 80 * s
    for t in np.linspace(0, 2 * math.pi, 90, endpoint=False):  # cilia fringe
        x, y = c + rx * math.cos(t), c + ry * math.sin(t)
        draw.line([x, y, x + 9 * math.cos(t), y + 9 * math.sin(t)], fill=_colour((150, 160, 150), traits), width=1)
    _ellipse(draw, c, c, rx, ry, fill=_colour((185, 205, 190), traits, 220), outline=_colour((110, 130, 115), traits),
             width=2)
    draw.arc([c - rx, c - 25 * s, c + rx * 0.6, c + 35 * s], 200, 330, fill=_colour((100, 120, 100), traits), width=4)
    for _k in range(traits["count"]):  # food vacuoles
        angle = rng.uniform(0, 2 * math.pi)
        _ellipse(draw, c + 0.5 * rx * math.cos(angle), c + 0.6 * ry * math.sin(angle), 5, 5,
                 fill=_colour((140, 150, 110), traits))
    _ellipse(draw, c, c - 10, 10 * s, 18 * s, fill=_colour((150, 140, 170), traits))  # macronucleus


def _chironomid(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    bend = rng.uniform(0.6, 1.4)
    for k in range(12):  # segmented, blood-red larva in a C-curve
        t = -1.2 + 2.4 * k / 11
        x = c + 70 * s * math.sin(t * bend)
        y = c + 85 * s * (t / 1.2) * 0.9
        _ellipse(draw, x, y, 13 * s, 11 * s, fill=_colour((175, 40, 45), traits, 240),
                 outline=_colour((110, 20, 25), traits), width=2)
    head_x, head_y = c + 70 * s * math.sin(-1.2 * bend), c - 85 * s * 0.9
    _ellipse(draw, head_x, head_y - 10 * s, 10 * s, 9 * s, fill=(70, 45, 25, 255))  # dark head capsule


def _coscinodiscus(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    radius = 70 * s
    _ellipse(draw, c, c, radius, radius, fill=_colour((200, 175, 105), traits, 235),
             outline=_colour((130, 105, 45), traits), width=3)
    for ring in np.arange(10, radius - 4, 9):  # areolae in radial rows
        n = int(2 * math.pi * ring / 9)
        for k in range(n):
            t = 2 * math.pi * k / n
            _ellipse(draw, c + ring * math.cos(t), c + ring * math.sin(t), 2.2, 2.2,
                     fill=_colour((150, 125, 60), traits))


def _volvox(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    radius = 80 * s
    _ellipse(draw, c, c, radius, radius, fill=_colour((150, 200, 120), traits, 150),
             outline=_colour((70, 140, 60), traits), width=2)
    for _ in range(160):  # somatic cells on the surface
        t, r = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.uniform(0.7, 1.0))
        _ellipse(draw, c + r * math.cos(t), c + r * math.sin(t), 2.5, 2.5, fill=_colour((40, 120, 40), traits))
    for _ in range(traits["count"] % 4 + 2):  # daughter colonies
        t, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, radius * 0.5)
        _ellipse(draw, c + r * math.cos(t), c + r * math.sin(t), 15 * s, 15 * s, fill=_colour((50, 140, 50), traits),
                 outline=_colour((30, 90, 30), traits), width=2)


def _mayfly(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    brown = _colour((120, 95, 60), traits)
    _ellipse(draw, c, c - 55 * s, 16 * s, 14 * s, fill=brown)  # head
    _ellipse(draw, c, c - 25 * s, 20 * s, 22 * s, fill=brown)  # thorax with wing pads
    draw.polygon([(c - 18 * s, c - 5 * s), (c + 18 * s, c - 5 * s), (c + 6 * s, c + 60 * s), (c - 6 * s, c + 60 * s)],
                 fill=_colour((140, 110, 70), traits))  # tapering abdomen
    for k in range(6):  # plate gills along the abdomen
        y = c + (2 + 9 * k) * s
        for side in (-1, 1):
            _ellipse(draw, c + side * (20 - 2 * k) * s, y, 7 * s, 4 * s, fill=_colour((170, 150, 110), traits, 200))
    for side in (-1, 0, 1):  # three cerci
        draw.line([c, c + 58 * s, c + side * 30 * s, c + 118 * s], fill=brown, width=2)
    for k in range(3):  # legs
        for side in (-1, 1):
            draw.line([c, c - (35 - 10 * k) * s, c + side * 50 * s, c - (45 - 25 * k) * s], fill=brown, width=3)


def _ceratium(draw: ImageDraw.ImageDraw, traits: dict, rng: np.random.Generator) -> None:
    s, c = traits["size"], CANVAS / 2
    body = _colour((170, 140, 95), traits, 240)
    edge = _colour((110, 85, 50), traits)
    draw.polygon([(c - 8 * s, c - 20 * s), (c + 8 * s, c - 20 * s), (c + 3 * s, c - 110 * s), (c - 3 * s, c - 110 * s)],
                 fill=body, outline=edge)  # apical horn
    for side in (-1, 1):  # two antapical horns
        draw.polygon([(c + side * 8 * s, c + 20 * s), (c + side * 22 * s, c + 15 * s),
                      (c + side * 45 * s * traits["aspect"], c + 95 * s), (c + side * 38 * s, c + 97 * s)],
                     fill=body, outline=edge)
    _ellipse(draw, c, c, 30 * s, 32 * s, fill=body, outline=edge, width=3)
    draw.line([c - 30 * s, c + 2, c + 30 * s, c - 2], fill=edge, width=4)  # cingulum (girdle)


_DRAWERS: dict[str, Callable] = {
    "daphnia": _daphnia, "navicula": _navicula, "copepod": _copepod, "paramecium": _paramecium,
    "chironomid": _chironomid, "coscinodiscus": _coscinodiscus, "volvox": _volvox, "mayfly": _mayfly,
    "ceratium": _ceratium,
}
