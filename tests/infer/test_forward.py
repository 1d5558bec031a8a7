"""infer/forward.py: the compiled decode step gives exactly the eager one's greedy tokens, plain and speculative,
on batches that pad up to their bucket; the eager path is the reference."""
import pytest
import torch
from infer_models import TINY, make_model, prompts

from nanoseek.config import ModelConfig
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.infer.forward import bucket
from nanoseek.quant import quantize_model


def test_buckets_are_the_powers_of_two_at_or_above():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 33, 64)] == [1, 2, 4, 4, 8, 8, 16, 64, 64]


def compiled_and_eager(model, batches, new_tokens: int, speculative: bool) -> tuple[list, list]:
    """Greedy tokens of every batch of prompts from a compiled engine and an eager one."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    outs = []
    for compile in (True, False):
        engine = Engine(model, EngineConfig(cache_mb=8, block_size=8, speculative=speculative, compile=compile))
        outs.append([engine.generate(batch, params) for batch in batches])
    return outs[0], outs[1]


STUDENT = ModelConfig.from_preset("tiny-student").replace(vocab_size=TINY.vocab_size, hidden_size=48,
                                                          intermediate_size=64, num_hidden_layers=2)


@pytest.mark.parametrize("config, speculative", [(TINY, False), (TINY, True), (STUDENT, False)],
                         ids=["mla-moe", "mla-moe-speculative", "gqa-student"])
def test_compiled_greedy_tokens_equal_eager_ones(config, speculative):
    """The CI's short version: models of a few thousand parameters (MLA and DeepSeekMoE with an MTP module, and a
    dense GQA student), batches of 1 and 3 (padded to 4)."""
    model = make_model(config, seed=21)
    batches = [prompts([7], seed=1), prompts([5, 12, 3], seed=2)]
    compiled, eager = compiled_and_eager(model, batches, 12, speculative)
    assert compiled == eager
    assert len({tuple(t) for batch in eager for t in batch}) == 4  # four different continuations


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_compiled_quantized_model_equals_eager(fmt):
    """int8 / int4 layers (torch's packed CPU kernels) and expert stacks inside the compiled step: the same greedy
    tokens as eagerly, the rest of the model in float32 (in bf16 the two round differently). Widths of 32 and 64, so
    that int4's groups of 32 take the routed experts too."""
    config = TINY.replace(hidden_size=64, moe_intermediate_size=32)
    model = quantize_model(make_model(config, seed=23), fmt, group_size=32)
    if fmt == "int4":
        assert model.layers[1].mlp.experts.up_proj.q.dtype == torch.uint8
    batches = [prompts([7], seed=3), prompts([5, 12, 3], seed=4)]
    compiled, eager = compiled_and_eager(model, batches, 12, speculative=False)
    assert compiled == eager
    assert len({tuple(t) for batch in eager for t in batch}) == 4


@pytest.mark.slow
@pytest.mark.parametrize("speculative", [False, True])
def test_compiled_greedy_tokens_equal_eager_ones_on_tiny(speculative):
    """The `tiny` preset, batches of 1, 3, 8 and 20 prompts of mixed lengths, 96 new tokens each."""
    model = make_model(ModelConfig.from_preset("tiny"), seed=22)
    batches = [prompts(lengths, vocab=2048, seed=i) for i, lengths in
               enumerate([[30], [5, 60, 17], [9] * 4 + [40] * 4, list(range(3, 63, 3))])]
    compiled, eager = compiled_and_eager(model, batches, 96, speculative)
    assert compiled == eager
