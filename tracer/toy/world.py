"""The "shapes" toy world: small scenes, questions about them, and the ground truth.

A scene is a 64x64 RGB image on a 4x4 grid of 16 px cells holding one to three objects.
Every object has its own shape and its own colour, so every question has exactly one
answer. Each example records which objects the answer depends on and which image
soft-token positions (an 8x8 grid of 8 px tokens) their pixels fall under: that is the
region a correct circuit has to start from.

Everything is a pure function of (split, seed, index): the same call gives the same
example on every machine. Train and held-out splits never share a scene layout.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {
    "red": (220, 45, 45),
    "green": (45, 185, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 45),
}
COUNT_WORDS = ("zero", "one", "two", "three")
IMAGE_SIZE = 64
GRID = 4  # object cells per side
CELL = IMAGE_SIZE // GRID
TOKEN_GRID = 8  # image soft tokens per side
TOKEN_PX = IMAGE_SIZE // TOKEN_GRID
BACKGROUND = (24, 24, 28)

# Text-only facts, so that the model also answers prompts without an image.
FACTS = {
    "What color is grass?": "green",
    "What color is the sky?": "blue",
    "What color is a banana?": "yellow",
    "What color is fire?": "red",
    "What color is a lemon?": "yellow",
    "What color is the sea?": "blue",
    "What color is blood?": "red",
    "What color is a leaf?": "green",
    "What number comes after one?": "two",
    "What number comes after two?": "three",
    "What number comes before two?": "one",
    "What shape has three sides?": "triangle",
    "What shape has four sides?": "square",
    "What shape is round?": "circle",
}

QUESTION_TYPES = ("color", "shape", "position", "count", "exists", "fact")
SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    row: int  # cell row, 0 = top
    col: int  # cell column, 0 = left
    size: int = 12  # bounding box side in pixels
    dx: int = 0  # offset of the box inside its cell
    dy: int = 0

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive pixel box of the object."""
        x0 = self.col * CELL + (CELL - self.size) // 2 + self.dx
        y0 = self.row * CELL + (CELL - self.size) // 2 + self.dy
        return x0, y0, x0 + self.size - 1, y0 + self.size - 1

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]

    @property
    def layout_key(self) -> str:
        """What makes two scenes 'the same' for splitting: shapes, colours and cells."""
        return ";".join(sorted(f"{o.shape},{o.color},{o.row},{o.col}" for o in self.objects))

    def render(self) -> Image.Image:
        image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            _draw_object(draw, obj, COLORS[obj.color])
        return image

    def object_mask(self, obj: SceneObject) -> np.ndarray:
        """Boolean (64, 64) mask of the pixels the object paints."""
        image = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        _draw_object(ImageDraw.Draw(image), obj, 255)
        return np.asarray(image) > 0

    def token_coverage(self, obj: SceneObject) -> np.ndarray:
        """Fraction of each image soft token's pixels painted by the object, (8, 8)."""
        mask = self.object_mask(obj).astype(np.float64)
        return mask.reshape(TOKEN_GRID, TOKEN_PX, TOKEN_GRID, TOKEN_PX).mean(axis=(1, 3))

    def token_positions(self, obj: SceneObject) -> list[int]:
        """Row-major indices (row * 8 + col) of the soft tokens the object's pixels fall under."""
        return [int(i) for i in np.flatnonzero(self.token_coverage(obj).ravel() > 0)]

    def by_shape(self, shape: str) -> SceneObject | None:
        return next((o for o in self.objects if o.shape == shape), None)

    def by_color(self, color: str) -> SceneObject | None:
        return next((o for o in self.objects if o.color == color), None)


@dataclass(frozen=True)
class Example:
    question_type: str
    question: str
    answer: str
    scene: Scene | None  # None for text-only questions
    evidence: tuple[SceneObject, ...] = ()
    split: str = "train"
    index: int = 0

    @property
    def has_image(self) -> bool:
        return self.scene is not None

    def image(self) -> Image.Image | None:
        return self.scene.render() if self.scene is not None else None

    @property
    def evidence_tokens(self) -> list[int]:
        """Image soft-token positions (row-major in the 8x8 grid) under the evidence objects."""
        if self.scene is None:
            return []
        positions: set[int] = set()
        for obj in self.evidence:
            positions.update(self.scene.token_positions(obj))
        return sorted(positions)

    def to_dict(self) -> dict:
        return {
            "question_type": self.question_type,
            "question": self.question,
            "answer": self.answer,
            "split": self.split,
            "index": self.index,
            "objects": [o.__dict__ for o in self.scene.objects] if self.scene else [],
            "evidence": [o.name for o in self.evidence],
            "evidence_tokens": self.evidence_tokens,
        }


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill) -> None:
    x0, y0, x1, y1 = obj.box
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        inset = max(1, obj.size // 8)
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif obj.shape == "cross":
        t = max(2, obj.size // 4)
        cx0 = x0 + (obj.size - t) // 2
        draw.rectangle((cx0, y0, cx0 + t - 1, y1), fill=fill)
        draw.rectangle((x0, cx0 - x0 + y0, x1, cx0 - x0 + y0 + t - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def split_of(scene: Scene) -> str:
    """Deterministic split of a scene layout: a hash, so no scene is in both splits."""
    digest = hashlib.sha256(scene.layout_key.encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") / 2**32 < HELDOUT_FRACTION else "train"


def _rng(split: str, seed: int, index: int) -> random.Random:
    return random.Random(f"shapes/{split}/{seed}/{index}")


def sample_scene(rng: random.Random, n_objects: int) -> Scene:
    cells = rng.sample(range(GRID * GRID), n_objects)
    shapes = rng.sample(SHAPES, n_objects)
    colors = rng.sample(list(COLORS), n_objects)
    objects = []
    for cell, shape, color in zip(cells, shapes, colors):
        size = rng.randint(10, 14)
        slack = (CELL - size) // 2
        objects.append(
            SceneObject(
                shape=shape,
                color=color,
                row=cell // GRID,
                col=cell % GRID,
                size=size,
                dx=rng.randint(-slack, CELL - size - slack),
                dy=rng.randint(-slack, CELL - size - slack),
            )
        )
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def _scene_in_split(rng: random.Random, split: str, n_objects: int) -> Scene:
    while True:
        scene = sample_scene(rng, n_objects)
        if split_of(scene) == split:
            return scene


def make_example(split: str = "train", index: int = 0, seed: int = 0, question_type: str | None = None) -> Example:
    """The example number `index` of a split. Question types cycle unless one is given."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = _rng(split, seed, index)
    qtype = question_type or QUESTION_TYPES[index % len(QUESTION_TYPES)]
    if qtype not in QUESTION_TYPES:
        raise ValueError(f"question type must be one of {QUESTION_TYPES}, got {qtype!r}")

    if qtype == "fact":
        question = rng.choice(sorted(FACTS))
        return Example("fact", question, FACTS[question], None, (), split, index)

    if qtype == "count":
        scene = _scene_in_split(rng, split, rng.randint(1, 3))
        return Example(
            "count", "How many shapes?", COUNT_WORDS[len(scene.objects)], scene, scene.objects, split, index
        )

    scene = _scene_in_split(rng, split, rng.randint(1, 3))
    target = rng.choice(scene.objects)
    if qtype == "color":
        return Example("color", f"What color is the {target.shape}?", target.color, scene, (target,), split, index)
    if qtype == "shape":
        return Example("shape", f"What shape is {target.color}?", target.shape, scene, (target,), split, index)
    if qtype == "position":
        if rng.random() < 0.5:
            answer = "left" if target.col < GRID // 2 else "right"
            question = f"Is the {target.color} shape left or right?"
        else:
            answer = "top" if target.row < GRID // 2 else "bottom"
            question = f"Is the {target.color} shape top or bottom?"
        return Example("position", question, answer, scene, (target,), split, index)

    # exists: half yes, half no; a "no" is a hard negative when the scene allows it
    # (colour and shape both present, on different objects).
    if rng.random() < 0.5:
        return Example(
            "exists", f"Is there a {target.color} {target.shape}?", "yes", scene, (target,), split, index
        )
    present = {(o.color, o.shape) for o in scene.objects}
    colors_here = [o.color for o in scene.objects]
    shapes_here = [o.shape for o in scene.objects]
    hard = [(c, s) for c in colors_here for s in shapes_here if (c, s) not in present]
    pool = hard if hard and rng.random() < 0.6 else [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    color, shape = rng.choice(sorted(pool))
    evidence = tuple(o for o in scene.objects if o.color == color or o.shape == shape)
    return Example("exists", f"Is there a {color} {shape}?", "no", scene, evidence, split, index)


def examples(split: str = "train", seed: int = 0, start: int = 0, count: int | None = None,
             question_type: str | None = None) -> Iterator[Example]:
    """Examples start, start+1, ... of a split (endless when count is None)."""
    index = start
    while count is None or index < start + count:
        yield make_example(split, index, seed, question_type)
        index += 1


def vocabulary() -> list[str]:
    """Every word the toy prompts and answers use (the tokenizer's word list)."""
    words: set[str] = set()
    templates = [
        "What color is the {s}?", "What shape is {c}?", "Is the {c} shape left or right?",
        "Is the {c} shape top or bottom?", "How many shapes?", "Is there a {c} {s}?",
    ]
    for template in templates:
        for s in SHAPES:
            for c in COLORS:
                words.update(_words(template.format(s=s, c=c)))
    for question, answer in FACTS.items():
        words.update(_words(question))
        words.add(answer)
    words.update(COUNT_WORDS)
    words.update(["yes", "no", "left", "right", "top", "bottom"])
    return sorted(words)


def _words(text: str) -> list[str]:
    return text.replace("?", " ?").split()


@dataclass
class SceneSpec:
    """A scene described by hand (for tests and for drawing your own)."""

    objects: list[tuple[str, str, int, int]] = field(default_factory=list)  # (shape, color, row, col)

    def build(self) -> Scene:
        return Scene(tuple(SceneObject(s, c, r, k) for s, c, r, k in self.objects))
