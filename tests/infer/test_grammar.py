"""infer/grammar.py: constrained decoding in the engine. A random tiny model samples at temperature 1, yet every
reply parses and validates against the schema (checked by jsonschema, a validator independent of llguidance);
unconstrained requests in the same batch sample what they would have alone."""
import json

import jsonschema
import pytest
import torch

from nanoseek.config import ModelConfig
from nanoseek.errors import InferenceError
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.infer.grammar import json_schema_grammar, lark_grammar
from nanoseek.model import Transformer
from nanoseek.train.default_tokenizer import default_tokenizer

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pet": {"enum": ["cat", "dog", None]},
    "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
    "required": ["name", "age", "pet", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(Transformer(ModelConfig.from_preset("tiny")), EngineConfig(cache_mb=16, max_seqs=16),
                  default_tokenizer())


def test_sampled_replies_all_validate(engine):
    tokenizer = engine.tokenizer
    params = SamplingParams(temperature=1.0, max_tokens=120, n=8, seed=3, grammar=json_schema_grammar(SCHEMA))
    prompts = [tokenizer.encode(p) for p in ("Describe a person as JSON.", "{", "Hello")]
    replies = engine.generate(prompts, params)
    assert len(replies) == 24
    for ids in replies:
        assert tokenizer.eos_id not in ids                       # the reply ends where the grammar does
        jsonschema.validate(json.loads(tokenizer.decode(ids)), SCHEMA)


def test_unconstrained_rows_are_untouched(engine):
    prompt = engine.tokenizer.encode("Once upon a time")
    free = SamplingParams(temperature=1.0, max_tokens=12, seed=7, ignore_eos=True)
    alone = engine.generate([prompt], free)
    ids = [engine.add_request(prompt, SamplingParams(temperature=1.0, max_tokens=12, seed=1,
                                                     grammar=json_schema_grammar(SCHEMA))),
           engine.add_request(prompt, free)]
    out = {}
    for u in engine.stream(ids):
        out.setdefault(u.request_id, []).extend(u.token_ids)
    assert out[ids[1]] == alone[0]


def test_greedy_lark_choice(engine):
    grammar = lark_grammar('start: "yes" | "no" | "maybe so"')
    [reply] = engine.generate([engine.tokenizer.encode("Well?")], SamplingParams(temperature=0, grammar=grammar))
    assert engine.tokenizer.decode(reply) in {"yes", "no", "maybe so"}


@pytest.mark.parametrize("schema", [{"type": "objectx"}, {"type": "object", "properties": {"a": {"minimum": "x"}}},
                                    ["not", "an", "object"]])
def test_bad_schemas_are_refused(schema):
    with pytest.raises(InferenceError, match="schema|grammar"):
        json_schema_grammar(schema)


def test_ignore_eos_still_stops_at_the_grammars_end(engine):
    grammar = lark_grammar('start: "yes" | "no"')
    [reply] = engine.generate([[5, 6]], SamplingParams(temperature=1, seed=0, ignore_eos=True, grammar=grammar))
    assert engine.tokenizer.decode(reply) in {"yes", "no"}


def test_no_grammar_with_speculation():
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny")
    engine = Engine(Transformer(config), EngineConfig(cache_mb=4, speculative=True), default_tokenizer())
    with pytest.raises(InferenceError, match="speculative"):
        engine.add_request([5, 6], SamplingParams(grammar=json_schema_grammar(SCHEMA)))
