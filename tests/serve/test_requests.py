"""Request parsing without a server: what reaches the engine, and which parameter a 400 names."""
import pytest

from nanoseek.errors import ServeError
from nanoseek.serve.config import ServeConfig
from nanoseek.serve.requests import parse_chat, parse_completion
from nanoseek.tokenizer import chat_ids
from nanoseek.train.default_tokenizer import default_tokenizer

CONFIG = ServeConfig(model_name="tiny", default_max_tokens=77)
TOKENIZER = default_tokenizer()


def chat(**body):
    return parse_chat({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **body}, TOKENIZER, CONFIG,
                      max_n=8, context=1024)


def test_chat_prompt_opens_the_thinking():
    gen = chat()
    assert gen.prompt == chat_ids(TOKENIZER, [{"role": "user", "content": "hi"}], True)[0] + \
        TOKENIZER.encode("<think>\n")
    assert gen.params.max_tokens == 77 and gen.params.temperature == 1.0 and not gen.stream


def test_earlier_reasoning_is_not_fed_back():
    messages = [{"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1", "reasoning_content": "SECRET THOUGHTS"},
                {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "2"}]}]
    gen = parse_chat({"model": "tiny", "messages": messages}, TOKENIZER, CONFIG, max_n=8, context=1024)
    assert "SECRET" not in gen.prompt_text and "q2" in gen.prompt_text and "a1" in gen.prompt_text


def test_sampling_fields_reach_the_engine():
    gen = chat(n=2, temperature=0.5, top_p=0.9, max_tokens=5, stop=["x", "yz"], seed=3, presence_penalty=1,
               frequency_penalty=-1, logprobs=True, top_logprobs=3, stream=True, stream_options={"include_usage": True})
    p = gen.params
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.stop, p.seed) == (2, 0.5, 0.9, 5, ("x", "yz"), 3)
    assert (p.presence_penalty, p.frequency_penalty, p.logprobs) == (1, -1, 3)
    assert gen.stream and gen.include_usage
    assert chat(logprobs=True).params.logprobs == 0 and chat().params.logprobs is None
    assert chat(max_completion_tokens=9).params.max_tokens == 9


@pytest.mark.parametrize("body, param", [
    ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"), ({"n": 9}, "n"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 1.5}, "max_tokens"),
    ({"stop": ""}, "stop"), ({"stop": ["a"] * 17}, "stop"), ({"seed": -1}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": True}, "frequency_penalty"),
    ({"top_logprobs": 2}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"), ({"tools": []}, "tools"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "many words " * 600}]}, "messages"),
])
def test_bad_chat_parameter_is_named(body, param):
    with pytest.raises(ServeError) as e:
        chat(**body)
    assert (e.value.status, e.value.param) == (400, param)
    assert param.split("[")[0] in str(e.value)


def test_unknown_model_is_404():
    with pytest.raises(ServeError) as e:
        chat(model="gpt-4")
    assert (e.value.status, e.value.param, e.value.code) == (404, "model", "model_not_found")


def test_completion_prompt():
    gen = parse_completion({"model": "tiny", "prompt": "2 + 2 =", "logprobs": 2}, TOKENIZER, CONFIG, 8, 1024)
    assert gen.prompt == TOKENIZER.encode("2 + 2 =") and gen.params.logprobs == 2
    gen = parse_completion({"model": "tiny", "prompt": [5, 6, 7]}, TOKENIZER, CONFIG, 8, 1024)
    assert gen.prompt == [5, 6, 7]
    for prompt in ["", [], [5, 99999], None]:
        with pytest.raises(ServeError) as e:
            parse_completion({"model": "tiny", "prompt": prompt}, TOKENIZER, CONFIG, 8, 1024)
        assert e.value.param == "prompt"
