"""Synthetic data for the embedded default, generated deterministically from a seed.

A small visual world (coloured shapes in the four quadrants of an image) and a small
text world (facts, counting, opposites). Everything is written to disk in the LLaVA
format the real pipeline reads, so the demo runs through the same readers as real data:

- `captions.json`        stage 1 (template plain): an image and its caption
- `instruct.json`        stage 2 (template v1): VQA turns about colour, shape, count,
                         position and presence (POPE-like yes/no), plus a share of text-only
                         instructions (as LLaVA's 665k mix has ShareGPT), which ask the same
                         questions about a scene described in words
- `instruct_multimodal.json`  stage 3: the image samples of `instruct.json` only (the paper's
                         stage-3 mix, Table 12, is multimodal): nothing in stage 3 touches the
                         text world that the language evaluation measures
- `vqa_eval.json`        held-out images and questions, each with its answer options
- `text_train.json`      the text corpus that pretrains the tiny LLM (demo stage 0), as
                         text-only LLaVA samples for the `plain` template
- `language_eval.json`   held-out sentences and multiple-choice language questions
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    quadrant: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def draw_scene(objects: list[SceneObject], size: int, rng: random.Random, jitter: int = 0) -> Image.Image:
    """Each object fills most of its quadrant on a background of random tint; `jitter` pixels of
    random shrink and shift per object.

    Without jitter an object always covers the same pixels of its patches. The demo's vision
    encoder is random (no pretrained SigLIP to stand in for), and the patch embedding of a random
    ViT mixes an object's colour with which pixels it covers: with coverage fixed, colour is a
    linear feature the adapter can read; with jitter it is not, and a tiny LLM does not learn it.
    """
    background = tuple(235 + rng.randint(-10, 10) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    half = size // 2
    for obj in objects:
        qx = half if "right" in obj.quadrant else 0
        qy = half if "bottom" in obj.quadrant else 0
        margin = max(1, size // 16)
        extent = half - 2 * margin - rng.randint(0, jitter)
        x0 = qx + margin + rng.randint(0, max(0, half - 2 * margin - extent))
        y0 = qy + margin + rng.randint(0, max(0, half - 2 * margin - extent))
        box = (x0, y0, x0 + extent, y0 + extent)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=fill)
    return image


def random_scene(rng: random.Random, max_objects: int = 3) -> list[SceneObject]:
    count = rng.randint(1, max_objects)
    quadrants = rng.sample(QUADRANTS, count)
    objects, used = [], set()
    for quadrant in quadrants:
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if colour not in used:  # colours are unique within a scene: "the red object" names one
                used.add(colour)
                break
        objects.append(SceneObject(colour, shape, quadrant))
    return objects


def caption(objects: list[SceneObject]) -> str:
    parts = [f"a {o.name} at the {o.quadrant}" for o in objects]
    return (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]) + "."


def scene_words(objects: list[SceneObject]) -> str:
    """The scene as bare key words, e.g. "red circle top left, blue square bottom right"."""
    return ", ".join(f"{o.name} {o.quadrant}" for o in objects)


def questions(objects: list[SceneObject], rng: random.Random, max_objects: int = 3) -> list[dict]:
    """Question/answer pairs about one scene, each with the answer options that define chance.

    Questions address objects by quadrant or by colour (colours are unique within a scene), so a
    tiny model can answer them by looking up one image region or scanning for one colour.
    """
    target = rng.choice(objects)
    other = rng.choice(objects)
    out = [
        {"type": "colour", "question": f"What colour is the object at the {target.quadrant}?",
         "answer": target.colour, "options": list(COLOURS)},
        {"type": "shape", "question": f"What shape is the object at the {other.quadrant}?",
         "answer": other.shape, "options": list(SHAPES)},
        {"type": "position", "question": f"Where is the {rng.choice(objects).colour} object?",
         "options": list(QUADRANTS)},
    ]
    out[2]["answer"] = next(o.quadrant for o in objects if out[2]["question"] == f"Where is the {o.colour} object?")
    present = rng.random() < 0.5
    used = {o.colour for o in objects}
    colour = rng.choice(sorted(used)) if present else rng.choice([c for c in COLOURS if c not in used])
    out.append({"type": "presence", "question": f"Is there a {colour} object?",
                "answer": "yes" if present else "no", "options": ["yes", "no"]})
    if max_objects > 1:
        # Counts are answered in digits, as VQAv2's are: answered in number words ("two"), stage 2's
        # LoRA raised those words' prior and the language evaluation's counting items ("after three
        # comes four.") were the ones it flipped (full plan, stage 0 -> 2: 31 -> 29 of 38)
        out.append({"type": "count", "question": "How many objects are there?", "answer": str(len(objects)),
                    "options": [str(n) for n in range(1, max_objects + 1)]})
    return out


# --------------------------------------------------------------------------- text world

_FACTS = {
    "sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black", "blood": "red",
    "banana": "yellow", "cherry": "red", "leaf": "green", "ocean": "blue", "plum": "purple", "carrot": "orange",
    "lemon": "yellow", "lime": "green", "cloud": "white", "night": "black", "tomato": "red", "grape": "purple",
}
_OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "left": "right", "day": "night", "open": "closed",
              "fast": "slow", "old": "new", "full": "empty", "light": "dark", "high": "low", "wet": "dry"}
_FACT_COLOURS = sorted(set(_FACTS.values()))


def _text_sentences(rng: random.Random) -> list[str]:
    sentences = []
    for thing, colour in _FACTS.items():
        sentences += [f"the {thing} is {colour}.", f"the colour of the {thing} is {colour}."]
    for a, b in _OPPOSITES.items():
        sentences += [f"the opposite of {a} is {b}.", f"the opposite of {b} is {a}."]
    for n in range(1, 9):
        sentences.append(f"{NUMBER_WORDS[n]} comes after {NUMBER_WORDS[n - 1]}.")
        sentences.append(f"after {NUMBER_WORDS[n - 1]} comes {NUMBER_WORDS[n]}.")
    for start in range(0, 6):
        sentences.append("counting: " + " ".join(NUMBER_WORDS[start:start + 4]) + ".")
    rng.shuffle(sentences)
    return sentences


def _language_questions() -> list[dict]:
    """Multiple-choice completions scored by log-likelihood (the demo's language benchmark)."""
    items = []
    for thing, colour in _FACTS.items():
        items.append({"context": f"the {thing} is", "options": [f" {c}." for c in _FACT_COLOURS],
                      "answer": _FACT_COLOURS.index(colour)})
    words = sorted(set(_OPPOSITES) | set(_OPPOSITES.values()))
    for a, b in _OPPOSITES.items():
        options = [b] + [w for w in words if w not in (a, b)][:3]
        items.append({"context": f"the opposite of {a} is", "options": [f" {w}." for w in options], "answer": 0})
    for n in range(1, 9):
        options = [NUMBER_WORDS[n]] + [NUMBER_WORDS[m] for m in range(10) if m != n][:3]
        items.append({"context": f"after {NUMBER_WORDS[n - 1]} comes", "options": [f" {w}." for w in options],
                      "answer": 0})
    return items


# --------------------------------------------------------------------------- writing


def _conversation(question: str, answer: str, with_image: bool) -> list[dict]:
    human = f"<image>\n{question}" if with_image else question
    return [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]


def generate(out_dir: str, *, seed: int = 0, image_size: int = 64, max_objects: int = 1, jitter: int = 0,
             num_caption: int = 400,
             num_instruct_images: int = 400, num_eval_images: int = 60, text_only_fraction: float = 0.1,
             num_text_descriptions: int = 200, num_text_scene_questions: int = 0) -> dict:
    """Write the whole demo data set under `out_dir`; returns the paths."""
    rng = random.Random(seed)
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)

    def new_image(prefix: str, index: int):
        objects = random_scene(rng, max_objects)
        name = f"{prefix}_{index:05d}.png"
        draw_scene(objects, image_size, rng, jitter).save(os.path.join(image_dir, name))
        return name, objects

    captions = []
    for i in range(num_caption):
        name, objects = new_image("cap", i)
        captions.append({"id": f"cap-{i}", "image": name,
                         "conversations": [{"from": "human", "value": "<image>"},
                                           {"from": "gpt", "value": caption(objects)}]})

    sentences = _text_sentences(rng)
    instruct = []
    for i in range(num_instruct_images):
        name, objects = new_image("vqa", i)
        # One question per sample: in a multi-turn conversation, other questions would give the
        # answer away ("Is there a red object?" names the colour) and the model would learn to copy.
        qa = rng.choice(questions(objects, rng, max_objects))
        instruct.append({"id": f"vqa-{i}", "image": name,
                         "conversations": _conversation(qa["question"], qa["answer"], with_image=True)})
    multimodal = list(instruct)
    # Text-only instructions (stage 2 only): the same questions about a scene given in words. They
    # keep the LoRA'd LLM answering from text without rehearsing the language evaluation's facts.
    language_items = _language_questions()
    for i in range(int(text_only_fraction * num_instruct_images)):
        objects = random_scene(rng, max_objects)
        qa = rng.choice(questions(objects, rng, max_objects))
        instruct.append({"id": f"text-{i}", "conversations": _conversation(
            f"{scene_words(objects)}. {qa['question']}", qa["answer"], with_image=False)})
    rng.shuffle(instruct)

    vqa_eval = []
    for i in range(num_eval_images):
        name, objects = new_image("eval", i)
        for j, qa in enumerate(questions(objects, rng, max_objects)):
            vqa_eval.append({"id": f"eval-{i}-{j}", "image": name, "type": qa["type"],
                             "question": qa["question"], "answer": qa["answer"], "options": qa["options"]})

    # The language evaluation measures what the LLM knows (the facts it was pretrained on), so that
    # later stages can be checked for preserving it: its sentences are part of the corpus.
    eval_sentences = sentences[: len(sentences) // 4]
    paths = {
        "image_folder": image_dir,
        "captions": os.path.join(out_dir, "captions.json"),
        "instruct": os.path.join(out_dir, "instruct.json"),
        "instruct_multimodal": os.path.join(out_dir, "instruct_multimodal.json"),
        "vqa_eval": os.path.join(out_dir, "vqa_eval.json"),
        "text_train": os.path.join(out_dir, "text_train.json"),
        "language_eval": os.path.join(out_dir, "language_eval.json"),
    }
    write_json(paths["captions"], captions)
    write_json(paths["instruct"], instruct)
    write_json(paths["instruct_multimodal"], multimodal)
    write_json(paths["vqa_eval"], vqa_eval)
    # The corpus also speaks about scenes in words: a few key words for a scene (in the place the
    # image tokens take later), then a caption of it, or a question about it and the answer. A
    # pretrained LLM can already describe and answer from what its context says; stage 1 then only
    # has to make the image tokens say it (align them with these words) and stage 2 to ask.
    descriptions, scene_questions = [], []
    for _ in range(num_text_descriptions):
        objects = random_scene(rng, max_objects)
        descriptions.append(f"{scene_words(objects)}. {caption(objects)}")
    for _ in range(num_text_scene_questions):
        objects = random_scene(rng, max_objects)
        qa = rng.choice(questions(objects, rng, max_objects))
        scene_questions.append(f"{scene_words(objects)}. {qa['question']} {qa['answer']}.")
    corpus = sentences + descriptions + scene_questions
    rng.shuffle(corpus)
    write_json(paths["text_train"], [
        {"id": f"text-{i}", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": sentence}]}
        for i, sentence in enumerate(corpus)
    ])
    write_json(paths["language_eval"], {"sentences": eval_sentences, "questions": language_items})
    return paths


def chance_accuracy(vqa_items: list[dict]) -> float:
    """Expected accuracy of guessing uniformly among each question's options."""
    return sum(1.0 / len(q["options"]) for q in vqa_items) / max(len(vqa_items), 1)


def write_json(path: str, data) -> None:
    """JSON written atomically (a temporary file, then renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)
