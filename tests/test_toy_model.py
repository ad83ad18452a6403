import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Gemma3ForConditionalGeneration

from tracer.toy import model as toy_model
from tracer.toy import world
from tracer.toy.evaluate import predict


def test_processor_puts_image_tokens_in_place():
    processor = toy_model.build_processor()
    tok = processor.tokenizer
    ex = world.make_example("heldout", 0, question_type="color")
    enc = processor(text=[toy_model.chat_prompt(ex.question, True)], images=[[ex.image()]], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    img = tok.convert_tokens_to_ids("<image_soft_token>")
    positions = [i for i, t in enumerate(ids) if t == img]
    assert len(positions) == 64 and positions == list(range(positions[0], positions[0] + 64))
    assert ids[positions[0] - 1] == tok.convert_tokens_to_ids("<start_of_image>")
    assert ids[positions[-1] + 1] == tok.convert_tokens_to_ids("<end_of_image>")
    assert enc["token_type_ids"][0].nonzero().flatten().tolist() == positions
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    words = tok.convert_ids_to_tokens(ids)
    assert words[-3:] == ["<start_of_turn>", "model", "\n"]
    assert enc["pixel_values"].shape == (1, 3, 64, 64)
    # The chat template gives the same prompt as chat_prompt.
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ex.question}]}],
        add_generation_prompt=True, tokenize=False)
    assert text == "<bos>" + toy_model.chat_prompt(ex.question, True)


def test_fresh_model_round_trips_through_save_pretrained(tmp_path):
    model, processor = toy_model.build_model(seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    ex = world.make_example("train", 0, question_type="shape")
    enc = proc2(text=[toy_model.chat_prompt(ex.question, True)], images=[[ex.image()]], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model.eval()(**enc).logits, again.eval()(**enc).logits)


def test_shipped_checkpoint_loads_offline_and_answers(toy_vlm):
    model, processor = toy_vlm
    assert isinstance(model, Gemma3ForConditionalGeneration)
    assert model.config.mm_tokens_per_image == 64
    examples = [world.make_example("heldout", 1000 + i, question_type=q) for q in world.QUESTION_TYPES for i in range(5)]
    answers = predict(model, processor, examples)
    assert answers == [e.answer for e in examples]


def test_shipped_checkpoint_generates_answer_then_stops(toy_vlm):
    model, processor = toy_vlm
    ex = world.make_example("heldout", 7, question_type="color")
    enc = processor(text=[toy_model.chat_prompt(ex.question, True)], images=[[ex.image()]], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    new = processor.tokenizer.convert_ids_to_tokens(out[0, enc["input_ids"].shape[1]:].tolist())
    assert new[:2] == [ex.answer, "<end_of_turn>"]


def test_accuracy_table_marks_types_against_the_bar():
    from tracer.toy.evaluate import ACCURACY_BAR, format_table

    table = format_table({"color": 1.0, "position": 0.964, "exists": 0.93}, 500)
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:5]}
    assert ACCURACY_BAR == 0.95 and rows == {"color": "ok", "position": "ok", "exists": "BELOW"}
    assert "BELOW" in format_table({"position": 0.964}, 500, bar=0.97)
