"""Reader data (contextflow_core.data.reader_data), the reader training script and the shipped adapter."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import pytest

from contextflow_core.data import make_synthetic
from contextflow_core.data import synthetic_world
from contextflow_core.data.reader_data import DISTRACTOR_KINDS, make_reader_examples
from contextflow_core.data.reader_world import INITIALS, KINDS, NAME_MAKERS, RELATIONS

ROOT = Path(__file__).resolve().parents[1]
READER_DIR = ROOT / "contextflow_core" / "models" / "reader"
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _rows(examples):
    return [(e.question, [(p.id, p.title, p.text) for p in e.passages], e.gold_index, e.answer) for e in examples]


@pytest.fixture(scope="module")
def many():
    return make_reader_examples(800, seed=0)


# ---------------------------------------------------------------------------- the data


def test_same_seed_same_examples_other_seed_other_examples():
    assert _rows(make_reader_examples(60, seed=3)) == _rows(make_reader_examples(60, seed=3))
    assert _rows(make_reader_examples(60, seed=3)) != _rows(make_reader_examples(60, seed=4))


def test_every_answer_is_a_span_of_its_gold_passage_only_gold_of_its_kind(many):
    for ex in many:
        assert 0 <= ex.gold_index < len(ex.passages) <= 4
        assert ex.answer and ex.answer in ex.gold.text
        assert ex.metadata["entity"] in ex.question
        for i, p in enumerate(ex.passages):  # a distractor never names the asked entity, but one about its other facts
            if i != ex.gold_index and ex.metadata["entity"] in p.text:
                assert "same_entity" in ex.metadata["distractors"]


def test_more_kinds_relations_and_templates_than_the_benchmark():
    bench_attrs = [a for attrs in synthetic_world.ATTRIBUTES.values() for a in attrs]
    ours = [r for rels in RELATIONS.values() for r in rels]
    assert len(KINDS) > 2 * len(synthetic_world.KINDS)
    assert len(ours) > 2 * len(bench_attrs)
    assert sum(len(r.facts) for r in ours) > sum(len(a.facts) for a in bench_attrs)
    assert sum(len(r.questions) for r in ours) > sum(len(a.questions) for a in bench_attrs)


def test_examples_vary_in_kind_relation_style_distractors_titles_and_answer_type(many):
    assert set(Counter(e.metadata["kind"] for e in many)) == set(KINDS)
    assert len({(e.metadata["kind"], e.metadata["relation"]) for e in many}) >= 40
    assert {e.metadata["style"] for e in many} == {"prose", "sheet"}
    assert {len(e.passages) for e in many} == {1, 2, 3, 4}
    assert {d for e in many for d in e.metadata["distractors"]} == set(DISTRACTOR_KINDS)
    assert {e.gold.title is None for e in many} == {True, False}
    assert max(e.gold.text.count(".") for e in many) >= 4  # multi-sentence passages
    answers = [e.answer for e in many]
    assert any(re.fullmatch(r"1\d{3}|20[0-2]\d", a) for a in answers)  # years
    assert any(a.split()[1:2] and a.split()[1] in _MONTHS for a in answers)  # dates
    assert any(re.fullmatch(r"[\d,]+ [a-z ]+", a) for a in answers)  # numbers with units
    assert any(re.fullmatch(r"[\d,]+", a) and "," in a for a in answers)  # plain numbers
    assert any(re.fullmatch(r"[a-z' ]+ [a-z ]+", a) for a in answers)  # multi-word phrases
    assert any(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", a) for a in answers)  # people
    assert len({e.question.split(" ")[0] for e in many}) >= 6  # What / Who / When / Where / How / Which ...


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="num_examples"):
        make_reader_examples(0)
    with pytest.raises(ValueError, match="max_distractors"):
        make_reader_examples(3, max_distractors=-1)


# ---------------------------------------------------------------------------- never the benchmark's test split


def test_reader_names_cannot_be_benchmark_names():
    """Every word of a reader name starts with a cluster the benchmark's name maker never writes first."""
    import random

    rng = random.Random(0)
    bench = synthetic_world._World(rng)
    for kind in synthetic_world.KINDS:
        for _ in range(300):
            assert not bench.new_name(kind).startswith(INITIALS)
    for kind, make in NAME_MAKERS.items():
        for _ in range(100):
            invented = [w for w in make(rng).split() if w[0].isupper() and w not in _ENGLISH]
            assert invented and all(w.startswith(INITIALS) for w in invented), kind


_ENGLISH = {"Mount", "Peak", "Horn", "Ltd", "Group", "Industries", "Sons", "Partners", "Holdings", "Star", "Dawn",
            "Wind", "Queen", "Spirit", "Arrow", "The", "Lantern", "Orchard", "Bridge", "Harvest", "Winter", "Tower",
            "Fair", "Festival", "Games", "Carnival", "Island"}


@pytest.mark.parametrize("bench_seed,entities", [(0, 200), (0, 60), (0, 30), (1, 100)])
def test_no_test_split_question_or_answer_entity_appears_in_reader_data(bench_seed, entities):
    test = make_synthetic(num_entities=entities, seed=bench_seed).test
    names = {ex.metadata["entity"] for ex in test}
    names |= {ex.answer for ex in test if ex.metadata["attribute"] in {"home_town", "river", "mouth", "founder",
                                                                       "headquarters"}}
    questions = {ex.question for ex in test}
    examples = make_reader_examples(1500, seed=0) + make_reader_examples(300, seed=1_000_003)
    text = "\n".join([e.question for e in examples] + [e.answer for e in examples]
                     + [f"{p.title}\n{p.text}" for e in examples for p in e.passages])
    assert not questions & {e.question for e in examples}
    hits = [n for n in names if re.search(rf"\b{re.escape(n)}\b", text)]
    assert hits == []


# ---------------------------------------------------------------------------- training determinism (tiny model)


def _tiny_adapter(tmp_path, tag, tokenizer_factory, generator_factory):
    tr = _load_script("train_reader")
    cfg = tr.ReaderTrainConfig(steps=2, batch_size=3, threads=1, lora_r=2, lora_alpha=4)
    model = tr.add_reader_lora(generator_factory(), cfg)
    examples = make_reader_examples(cfg.num_examples, seed=cfg.data_seed)
    losses = tr.train_reader(model, tokenizer_factory(), examples, cfg, log=None)
    files = tr.save_adapter(model, tmp_path / tag)
    return losses, files, {n: (tmp_path / tag / n).read_bytes() for n in tr.ADAPTER_FILES}


def test_training_twice_under_one_seed_gives_identical_adapter_bytes(tmp_path):
    from tiny import tiny_generator, tiny_tokenizer

    a = _tiny_adapter(tmp_path, "a", tiny_tokenizer, tiny_generator)
    b = _tiny_adapter(tmp_path, "b", tiny_tokenizer, tiny_generator)
    assert a[0] == b[0] and all(x == x for x in a[0])
    assert a[2] == b[2]
    assert a[1] == {n: hashlib.sha256(data).hexdigest() for n, data in a[2].items()}


def test_training_moves_every_lora_weight_and_peft_loads_the_files(tmp_path):
    from peft import PeftModel
    from tiny import tiny_generator, tiny_tokenizer

    tr = _load_script("train_reader")
    cfg = tr.ReaderTrainConfig(steps=2, batch_size=3, threads=1, lora_r=2, lora_alpha=4)
    model = tr.add_reader_lora(tiny_generator(), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    tr.train_reader(model, tiny_tokenizer(), make_reader_examples(6, seed=0), cfg, log=None)
    after = dict(model.named_parameters())
    assert before and all(not after[n].detach().equal(t) for n, t in before.items())
    tr.save_adapter(model, tmp_path / "r")
    loaded = PeftModel.from_pretrained(tiny_generator(), str(tmp_path / "r"))
    state = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert set(state) == set(before)
    assert all(state[n].detach().equal(after[n].detach()) for n in state)


# ---------------------------------------------------------------------------- the shipped adapter


@pytest.fixture(scope="module")
def record():
    path = READER_DIR / "reader.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `python benchmarks/train_reader.py`")
    return json.loads(path.read_text(encoding="utf-8"))


def test_shipped_files_match_their_recorded_sha256(record):
    assert set(record["files"]) == {"adapter_model.safetensors", "adapter_config.json"}
    for name, digest in record["files"].items():
        assert hashlib.sha256((READER_DIR / name).read_bytes()).hexdigest() == digest, name
    assert (READER_DIR / "adapter_model.safetensors").stat().st_size <= 5 * 1024 * 1024


def test_recorded_command_is_the_training_script_with_the_recorded_settings(record):
    tr = _load_script("train_reader")
    words = shlex.split(record["command"])
    assert words[:2] == ["python", "benchmarks/train_reader.py"]
    args = tr.build_parser().parse_args(words[2:])
    assert not args.skip_eval and args.out is None  # it wrote the shipped folder and its metrics
    cfg = tr.config_from_args(args)
    assert record["config"] == json.loads(json.dumps(tr.asdict(cfg)))
    assert (record["seed"], record["data_seed"], record["steps"], record["num_examples"]) == (
        cfg.seed, cfg.data_seed, cfg.steps, cfg.num_examples)
    config = json.loads((READER_DIR / "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["r"], config["lora_alpha"]) == (cfg.lora_r, cfg.lora_alpha)
    assert sorted(config["target_modules"]) == sorted(cfg.target_modules)


def test_shipped_adapter_is_package_data():
    import importlib.resources
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = data["tool"]["setuptools"]["package-data"]["contextflow_core.models"]
    shipped = importlib.resources.files("contextflow_core.models") / "reader"
    for name in ("adapter_model.safetensors", "adapter_config.json", "reader.json"):
        assert (shipped / name).is_file(), name  # what an (editable) install sees
        assert any(Path("reader", name).match(g) for g in globs), name


@pytest.mark.embedded
def test_recorded_base_pin_is_the_embedded_generator(record):
    from contextflow_core.models.base_pin import weights_sha256

    tr = _load_script("train_reader")
    model, _ = tr.raw_generator()
    assert record["base"]["weights_sha256"] == weights_sha256(model)
