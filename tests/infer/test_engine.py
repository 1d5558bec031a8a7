"""infer/engine.py: greedy parity with transformers, continuous batching, chunked prefill, the cache budget, n
samples, stops, cancellation and bad input."""
import pytest
import torch
from infer_models import TINY, greedy_reference, make_model, prompts, randomize

from nanoseek import load_checkpoint
from nanoseek.errors import NanoseekError
from nanoseek.infer import Engine, EngineConfig, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)

HF_BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=3,
               num_attention_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
               v_head_dim=12, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
               n_group=4, topk_group=2, routed_scaling_factor=2.5, max_position_embeddings=256)
HF_CONFIGS = {
    "q_lora_groups": {},
    "no_q_lora_yarn": dict(q_lora_rank=None, n_group=1, topk_group=1,
                           rope_parameters=dict(rope_type="yarn", rope_theta=500.0, factor=4.0, mscale=0.8,
                                                mscale_all_dim=0.6, original_max_position_embeddings=32)),
    "tied_all_moe_halves": dict(tie_word_embeddings=True, first_k_dense_replace=0, rope_interleave=False,
                                n_shared_experts=2, norm_topk_prob=False),
}


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_greedy_matches_transformers_generate(name, tmp_path):
    """Prompts of different lengths in one Engine.generate call give exactly transformers' greedy tokens; the first
    shape through the compiled step (test_forward.py holds the others' compiled steps to their eager ones)."""
    transformers = pytest.importorskip("transformers")
    kwargs = dict(HF_BASE, **HF_CONFIGS[name])
    config = transformers.DeepseekV3Config(**kwargs, num_key_value_heads=kwargs["num_attention_heads"])
    torch.manual_seed(0)
    hf = randomize(transformers.DeepseekV3ForCausalLM(config), seed=1)
    hf.save_pretrained(tmp_path)
    engine = Engine(load_checkpoint(tmp_path), EngineConfig(cache_mb=4, block_size=8, prefill_chunk=16,
                                                            compile=name == "q_lora_groups"))
    batch = prompts([3, 17, 30, 9], vocab=97, seed=2)
    ours = engine.generate(batch, GREEDY)
    for prompt, got in zip(batch, ours):
        ids = torch.tensor([prompt])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, min_new_tokens=64,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        assert got == out[0, len(prompt):].tolist()
    assert len(set(map(tuple, ours))) == len(batch)  # not a degenerate comparison


@pytest.fixture(scope="module")
def model():
    return make_model(TINY, seed=3)


def test_continuous_batching_gives_one_at_a_time_outputs(model):
    """Requests of mixed prompt and output lengths, some joining while others run, in small prefill chunks."""
    batch = prompts([5, 40, 12, 1, 27, 8, 19, 33], seed=4)
    lengths = [20, 3, 31, 12, 1, 25, 9, 16]
    alone = [greedy_reference(model, p, n) for p, n in zip(batch, lengths)]
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4, prefill_chunk=10, max_seqs=5))
    done, ids = {}, {}
    for i in range(3):
        ids[engine.add_request(batch[i], SamplingParams(temperature=0, max_tokens=lengths[i], ignore_eos=True))] = i
    steps = 0
    while engine.requests:
        for u in engine.step():
            if u.finish_reason is not None:
                done[ids[u.request_id]] = u.sequence.output_ids
        steps += 1
        if steps in (2, 4, 9) or (steps == 5 and len(ids) < 8):  # latecomers join running requests
            for i in range(len(ids), min(len(ids) + 2, 8)):
                ids[engine.add_request(batch[i], SamplingParams(temperature=0, max_tokens=lengths[i],
                                                                ignore_eos=True))] = i
    assert len(done) == 8
    assert [done[i] for i in range(8)] == alone


def steps_of(engine: Engine, fn):
    """fn's result and the engine steps (forwards over the running batch) it took."""
    before = engine.stats.steps
    out = fn()
    return out, engine.stats.steps - before


def test_batched_decoding_takes_one_forward_per_step_for_every_request(model):
    """The decode step runs every sequence in one forward: 16 requests together take as many steps as the longest,
    not the sum. (Wall time: benchmarks/batching_and_prefix_cache.py.)"""
    batch = prompts([8 + i for i in range(16)], seed=5)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    engine = Engine(model, EngineConfig(cache_mb=4, block_size=8, prefix_cache=False))
    together, steps_together = steps_of(engine, lambda: engine.generate(batch, params))
    apart, steps_apart = steps_of(engine, lambda: [engine.generate([p], params)[0] for p in batch])
    assert together == apart
    assert steps_together <= 24 + 2 and steps_apart >= 16 * 24


def test_32_mixed_requests_together_take_a_quarter_of_the_steps_one_at_a_time_takes(model):
    g = torch.Generator().manual_seed(12)
    batch = prompts(torch.randint(4, 120, (32,), generator=g).tolist(), seed=12)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
              for n in torch.randint(8, 64, (32,), generator=g).tolist()]
    engine = Engine(model, EngineConfig(cache_mb=16, block_size=16, prefix_cache=False))

    def together():
        ids = [engine.add_request(p, s) for p, s in zip(batch, params)]
        done = {u.request_id: u.sequence.output_ids for u in engine.stream(ids) if u.finish_reason}
        return [done[i] for i in ids]

    joint, steps_together = steps_of(engine, together)
    apart, steps_apart = steps_of(engine, lambda: [engine.generate([p], s)[0] for p, s in zip(batch, params)])
    assert joint == apart
    assert steps_apart > 4 * steps_together


def test_long_prompts_are_prefilled_in_chunks_between_decode_steps(model):
    """A 100-token prompt in chunks of 16 does not stop a running request: it keeps getting a token each step."""
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4, prefill_chunk=16))
    short, long = prompts([4, 100], seed=6)
    first = engine.add_request(short, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    engine.step()
    engine.add_request(long, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    per_step = []
    for _ in range(7):  # 100 tokens = 7 chunks of 16
        per_step.append([u for u in engine.step() if u.request_id == first])
    assert all(len(u) == 1 and len(u[0].token_ids) == 1 for u in per_step)
    assert engine.prefilling == [] and len(engine.running) == 2
    outs = {u.request_id: u.sequence.output_ids for u in engine.stream() if u.finish_reason}
    assert outs[first + 1] == greedy_reference(model, long, 5)


def test_requests_wait_for_cache_room_instead_of_failing(model):
    """A budget for about one request at a time: the others queue, and all finish with the right outputs."""
    block_bytes = TINY.num_hidden_layers * 4 * sum(TINY.cache_widths()) * 4  # layers x tokens x width x float32
    config = EngineConfig(cache_mb=21 * block_bytes / 2**20, block_size=4)  # 20 usable blocks
    engine = Engine(model, config)
    assert engine.pool.capacity == 20
    batch = prompts([30, 28, 25], seed=7)
    ids = [engine.add_request(p, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)) for p in batch]
    engine.step()
    assert len(engine.waiting) == 2 and engine.free_blocks < 13  # the second one's 13 blocks do not fit
    outs = {u.request_id: u.sequence.output_ids for u in engine.stream(ids) if u.finish_reason}
    assert [outs[i] for i in ids] == [greedy_reference(model, p, 20) for p in batch]
    assert engine.free_blocks == 20


def test_a_request_that_can_never_fit_is_refused(model):
    engine = Engine(model, EngineConfig(cache_mb=0.05, block_size=4))
    with pytest.raises(NanoseekError, match=r"cache_mb"):
        engine.add_request(prompts([30])[0], SamplingParams(max_tokens=200))


def test_cancel_frees_the_cache_blocks(model):
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4, prefix_cache=False))
    free = engine.free_blocks
    a = engine.add_request(prompts([21])[0], SamplingParams(max_tokens=100, n=3, seed=0))
    b = engine.add_request(prompts([5])[0], SamplingParams(max_tokens=100))
    engine.step()
    engine.step()
    assert engine.free_blocks < free
    engine.cancel(a)
    engine.cancel(b)
    assert engine.free_blocks == free and not engine.requests and not engine.running
    engine.cancel(a)  # already gone: nothing to do
    with pytest.raises(NanoseekError, match="99"):
        engine.cancel(99)
    queued = engine.add_request(prompts([5])[0], SamplingParams(max_tokens=5))
    engine.cancel(queued)  # still waiting
    assert not engine.waiting and engine.free_blocks == free


def test_n_samples_share_one_prefill_and_equal_single_requests_with_their_seeds(model):
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4, prefix_cache=False))
    [p] = prompts([14], seed=8)
    params = SamplingParams(temperature=1.0, max_tokens=12, n=4, seed=10, ignore_eos=True)
    request = engine.add_request(p, params)
    engine.step()  # the prompt's 14 tokens are prefilled once, then forked
    assert len(engine.running) == 4 and {s.tokens[:14] == p for s in engine.running} == {True}
    shared = engine.running[1].blocks[:3]
    assert all(s.blocks[:3] == shared for s in engine.running)  # the prompt's full blocks, held by all four
    samples = {u.index: u.sequence.output_ids for u in engine.stream([request]) if u.finish_reason}
    for i in range(4):
        single = engine.generate([p], SamplingParams(temperature=1.0, max_tokens=12, seed=10 + i, ignore_eos=True))
        assert samples[i] == single[0]
    assert len({tuple(s) for s in samples.values()}) == 4


def test_stop_token_ids_and_end_of_sequence(model):
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4))
    [p] = prompts([6], seed=9)
    free = greedy_reference(model, p, 30)
    stop = free[7]
    [out] = engine.generate([p], SamplingParams(temperature=0, max_tokens=30, stop_token_ids=(stop,), ignore_eos=True))
    assert out == free[:free.index(stop) + 1]  # the stop token is the last one returned
    eos_engine = Engine(model, EngineConfig(cache_mb=2, block_size=4))
    eos_engine.eos_id = free[4]
    assert eos_engine.generate([p], SamplingParams(temperature=0, max_tokens=30))[0] == free[:free.index(free[4]) + 1]
    assert eos_engine.generate([p], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0] == free


def test_stop_strings_end_the_text_before_them(tokenizer):
    model = make_model(TINY.replace(vocab_size=tokenizer.vocab_size), seed=4)
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4), tokenizer=tokenizer)
    p = tokenizer.encode("hello world, ", add_bos=True)
    [free] = [u for u in engine.stream([engine.add_request(p, SamplingParams(temperature=0, max_tokens=40,
                                                                              ignore_eos=True))])][-1:]
    text = free.sequence.text
    assert text == tokenizer.decode(free.sequence.output_ids) and len(text) > 12
    stop = text[8:11]
    updates = list(engine.stream([engine.add_request(p, SamplingParams(temperature=0, max_tokens=40, stop=(stop,),
                                                                        ignore_eos=True))]))
    streamed = "".join(u.text for u in updates)
    assert streamed == text[:text.index(stop)] == updates[-1].sequence.text
    assert updates[-1].finish_reason == "stop" and stop not in streamed


def test_length_and_context_limits(model):
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4))
    [p] = prompts([250], seed=10)  # context 256: room for 6 new tokens
    updates = list(engine.stream([engine.add_request(p, SamplingParams(max_tokens=50, ignore_eos=True))]))
    assert updates[-1].finish_reason == "length" and len(updates[-1].sequence.output_ids) == 6


@pytest.mark.parametrize("prompt, params, match", [
    ([7] * 256, SamplingParams(), "256 tokens does not fit the context of 256"),
    ([], SamplingParams(), "empty"),
    ([1, 2, 96], SamplingParams(), "prompt token 2 is 96, outside the vocabulary"),
    ([1, -1], SamplingParams(), "is -1"),
    ([1, "a"], SamplingParams(), "'a'"),
    ([1, 2], SamplingParams(stop_token_ids=(500,)), "500"),
    ([1, 2], SamplingParams(stop=("x",)), "need a tokenizer"),
])
def test_bad_requests_raise_errors_naming_the_value(model, prompt, params, match):
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4))
    with pytest.raises(NanoseekError, match=match):
        engine.add_request(prompt, params)
    with pytest.raises(NanoseekError, match=match):
        engine.generate([[1, 2, 3], prompt], params)
    assert not engine.waiting  # nothing of a refused batch was queued


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_models_decode_as_their_own_forward(fmt):
    from nanoseek.quant import quantize_model

    config = TINY.replace(hidden_size=64, moe_intermediate_size=64, intermediate_size=64, kv_lora_rank=64,
                          q_lora_rank=64)  # int4 groups of 64 columns
    model = quantize_model(make_model(config, seed=6), fmt)
    batch = prompts([9, 3], seed=11)
    # the int8 / int4 kernels compute in bf16, so paths that round differently part ways at a near-tie sooner or
    # later: a short horizon
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    outs = Engine(model, EngineConfig(cache_mb=2, block_size=4)).generate(batch, params)
    assert outs == [greedy_reference(model, p, 10) for p in batch]


def test_engine_loads_a_checkpoint_directory_with_its_tokenizer(tmp_path, tokenizer):
    from nanoseek import save_checkpoint

    model = make_model(TINY.replace(vocab_size=tokenizer.vocab_size), seed=5)
    save_checkpoint(model, tmp_path)
    tokenizer.save(tmp_path)
    engine = Engine(tmp_path)
    assert engine.tokenizer is not None and engine.eos_id == tokenizer.eos_id
    p = tokenizer.encode("the quick", add_bos=True)
    assert engine.generate([p], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0] == \
        greedy_reference(model, p, 8)
