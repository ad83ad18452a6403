import numpy as np
import pytest

from tracer.toy import world


def test_examples_are_deterministic():
    a = [world.make_example("train", i, seed=3) for i in range(30)]
    b = [world.make_example("train", i, seed=3) for i in range(30)]
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    for x, y in zip(a, b):
        if x.has_image:
            assert x.image().tobytes() == y.image().tobytes()
    c = [world.make_example("train", i, seed=4) for i in range(30)]
    assert [e.to_dict() for e in a] != [e.to_dict() for e in c]


def test_splits_never_share_a_scene():
    train = {world.make_example("train", i).scene.layout_key for i in range(3000) if i % 6 != 5}
    held = {world.make_example("heldout", i).scene.layout_key for i in range(1500) if i % 6 != 5}
    assert train and held
    assert not train & held
    assert all(world.split_of(world.make_example("heldout", i).scene) == "heldout" for i in range(60) if i % 6 != 5)


@pytest.mark.parametrize("qtype", world.QUESTION_TYPES)
def test_every_question_type_has_a_consistent_answer(qtype):
    for i in range(60):
        ex = world.make_example("heldout", i, question_type=qtype)
        assert ex.question_type == qtype
        if qtype == "fact":
            assert not ex.has_image and ex.answer == world.FACTS[ex.question]
            continue
        scene = ex.scene
        shapes = [o.shape for o in scene.objects]
        colors = [o.color for o in scene.objects]
        assert len(set(shapes)) == len(shapes) and len(set(colors)) == len(colors)
        if qtype == "color":
            assert ex.answer == scene.by_shape(ex.question.split()[-1].rstrip("?")).color
        elif qtype == "shape":
            assert ex.answer == scene.by_color(ex.question.split()[-1].rstrip("?")).shape
        elif qtype == "count":
            assert ex.answer == world.COUNT_WORDS[len(scene.objects)]
        elif qtype == "exists":
            color, shape = ex.question.rstrip("?").split()[-2:]
            present = any(o.color == color and o.shape == shape for o in scene.objects)
            assert ex.answer == ("yes" if present else "no")
        elif qtype == "position":
            obj = scene.by_color(ex.question.split()[2])
            expected = {"left": obj.col < 2, "right": obj.col >= 2, "top": obj.row < 2, "bottom": obj.row >= 2}
            assert expected[ex.answer]


def test_ground_truth_tokens_are_exactly_the_tokens_under_the_pixels():
    for i in range(40):
        ex = world.make_example("train", i)
        if not ex.has_image:
            continue
        pixels = np.zeros((world.IMAGE_SIZE, world.IMAGE_SIZE), bool)
        for obj in ex.evidence:
            pixels |= ex.scene.object_mask(obj)
        expected = sorted({(y // world.TOKEN_PX) * world.TOKEN_GRID + x // world.TOKEN_PX for y, x in zip(*np.nonzero(pixels))})
        assert ex.evidence_tokens == expected
        if not (ex.question_type == "exists" and ex.answer == "no"):
            assert ex.evidence_tokens, "every image question but 'no such object' depends on some pixels"
        # The rendered image really has the object's colour inside its mask.
        image = np.asarray(ex.image())
        for obj in ex.evidence:
            mask = ex.scene.object_mask(obj)
            assert (image[mask] == world.COLORS[obj.color]).all()


def test_hand_built_scene():
    scene = world.SceneSpec([("circle", "red", 0, 0), ("cross", "blue", 3, 3)]).build()
    assert scene.token_positions(scene.by_shape("circle")) == [0, 1, 8, 9]
    assert scene.token_positions(scene.by_shape("cross")) == [54, 55, 62, 63]
