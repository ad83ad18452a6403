"""The sample graphs that `python -m app` opens with no model: one per toy question type plus a
text-only one, computed by the attribution engine on the shipped toy VLM and transcoders.

Each graph records its ground truth in `graph.info["toy"]`: the answer, the objects it depends
on and the image soft-token positions under them (absolute positions in the prompt too), so a
viewer can compare the region a circuit starts from with the region that actually matters.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from tracer.graph import save_graph
from tracer.toy import world
from tracer.toy.evaluate import predict


def pick_examples(model, processor, per_type: int = 1, seed: int = 0, search: int = 50,
                  types=None) -> list[world.Example]:
    """The first held-out examples of each question type (or of `types`) that the model answers
    correctly, preferring scenes with more than one object (more interesting circuits)."""
    picked: list[world.Example] = []
    for k, qtype in enumerate(world.QUESTION_TYPES):
        if types is not None and qtype not in types:
            continue
        # a different stretch of indices per type, so that the samples show different scenes
        candidates = [world.make_example("heldout", 1000 * k + i, seed, qtype) for i in range(search)]
        if qtype != "fact":
            candidates.sort(key=lambda e: -len(e.scene.objects))
        answers = predict(model, processor, candidates)
        good = [e for e, a in zip(candidates, answers) if a == e.answer]
        picked += good[:per_type]
    return picked


def ground_truth(example: world.Example, image_positions: list[int]) -> dict:
    truth = example.to_dict()  # evidence_tokens: row * 8 + col in the soft-token grid
    truth["evidence_positions"] = [image_positions[t] for t in truth["evidence_tokens"]] if image_positions else []
    return truth


def make_sample_graphs(session, out_dir: str | Path, per_type: int = 1, max_feature_nodes: int = 400,
                       batch_size: int = 128, types=None) -> list[Path]:
    """Sample graphs of `types` (default: every question type); a toy other than the default one
    ("toy-llava", ...) prefixes its name to the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    examples = pick_examples(session.model, session.processor, per_type, types=types)
    prefix = "" if session.model_ref == "toy" else f"{Path(str(session.model_ref)).name}-"
    for ex in tqdm(examples, desc="sample graphs"):
        slug = prefix + f"{ex.question_type}-{ex.split}{ex.index}-" + "-".join(
            w.strip("?").lower() for w in ex.question.split()[:6])
        graph = session.attribute(ex.question, ex.image(), slug=slug, max_feature_nodes=max_feature_nodes,
                                  batch_size=batch_size, progress=False)
        graph.info["toy"] = ground_truth(ex, graph.image_positions.tolist())
        written.append(save_graph(graph, out / slug))
    return written
