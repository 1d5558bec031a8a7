"""`nanoseek generate` and `nanoseek chat` (infer/terminal.py) on a tiny checkpoint."""
import io
import shutil

import pytest
from infer_models import TINY, greedy_reference, make_model

from nanoseek import save_checkpoint
from nanoseek.cli import main
from nanoseek.data.prompts import prompt_name, question_ids, save_prompt_format, text_prompt_ids
from nanoseek.data.sources import DIFFICULTY, EVAL_SEED
from nanoseek.data.tasks import generate_mix
from nanoseek.errors import ConfigError
from nanoseek.infer import Engine, EngineConfig, SamplingParams
from nanoseek.infer import terminal
from nanoseek.infer.terminal import ReplyPrinter, chat
from nanoseek.tokenizer import render_chat
from nanoseek.train.default_tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("ckpt")
    model = make_model(TINY.replace(vocab_size=tokenizer.vocab_size), seed=31)
    save_checkpoint(model, path)
    tokenizer.save(path)
    return path, model


def test_reply_printer_separates_reasoning_from_the_answer():
    out = io.StringIO()
    printer = ReplyPrinter(out)
    for piece in ["<think>", "\nadd 2 and ", "2\n</think>", "\n\n", "The answer", " is 4."]:
        printer.feed(piece)
    printer.close()
    assert printer.reasoning == "\nadd 2 and 2\n" and printer.answer == "The answer is 4."
    assert "<think>" not in out.getvalue() and out.getvalue().index("add 2") < out.getvalue().index("answer is")


def test_generate_streams_the_greedy_continuation(checkpoint, tokenizer, capsys):
    path, model = checkpoint
    main(["generate", str(path), "hello world", "--max-tokens", "12", "--temperature", "0", "--ignore-eos",
          "--threads", "1"])
    out = capsys.readouterr()
    expected = greedy_reference(model, tokenizer.encode("hello world", add_bos=True), 12)
    assert out.out == tokenizer.decode(expected).lstrip("\n") + "\n"
    assert "12 tokens" in out.err and "prompt cache hit 0/" in out.err


def test_generate_prompt_formats_by_name(tokenizer):
    assert text_prompt_ids(tokenizer, "What is 2 + 3?", "r1-zero") == question_ids(tokenizer, "What is 2 + 3?", [],
                                                                                   "r1-zero")
    assert text_prompt_ids(tokenizer, "hi", "text") == tokenizer.encode("hi", add_bos=True)
    with pytest.raises(ConfigError, match="prompt format 'x-shot'"):
        text_prompt_ids(tokenizer, "hi", "x-shot")


@pytest.mark.parametrize("few_shot, template", [(0, "chat"), (1, "chat")])
def test_generate_prompts_as_the_checkpoint_was_trained(checkpoint, tokenizer, capsys, tmp_path, few_shot, template):
    path, model = checkpoint
    folder = tmp_path / "ckpt"
    shutil.copytree(path, folder)
    save_prompt_format(folder, few_shot, template)
    main(["generate", str(folder), "What is 2 + 3?", "--max-tokens", "6", "--temperature", "0", "--ignore-eos",
          "--threads", "1"])
    out = capsys.readouterr()
    shots = generate_mix(few_shot, EVAL_SEED, "train", DIFFICULTY) if few_shot else []
    expected = greedy_reference(model, question_ids(tokenizer, "What is 2 + 3?", shots, template), 6)
    assert out.out == tokenizer.decode(expected).lstrip("\n") + "\n"
    assert f"prompt: {prompt_name(few_shot, template)}" in out.err


def test_generate_reports_bad_input_without_a_traceback(checkpoint, capsys):
    path, _ = checkpoint
    with pytest.raises(SystemExit) as e:
        main(["generate", str(path), "hi", "--top-p", "0"])
    assert e.value.code != 0 and "--top-p 0.0: expected a number in (0, 1]" in capsys.readouterr().err


def test_chat_keeps_the_conversation_and_resets(checkpoint, tokenizer):
    path, model = checkpoint
    engine = Engine(model, EngineConfig(cache_mb=2, block_size=4), tokenizer)
    lines = iter(["hi", "and again", "/reset", "hi", "/exit"])
    prompts = []
    original = engine.add_request

    def spy(prompt, params):
        prompts.append(prompt)
        return original(prompt, params)

    engine.add_request = spy
    out = io.StringIO()
    chat(engine, tokenizer, SamplingParams(temperature=0, max_tokens=6), out=out, read=lambda _: next(lines))
    first = tokenizer.encode(render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True))
    assert prompts[0] == first and prompts[2] == first  # /reset started over
    assert prompts[1][:len(first)] == first and len(prompts[1]) > len(first) + 2  # the history came along
    assert "(new conversation)" in out.getvalue()


CALL = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜>"
        "<｜tool▁calls▁end｜>")
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "", "parameters": {}}}]


def test_chat_shows_tool_calls_and_takes_their_results(monkeypatch):
    """The model (canned here) calls a tool: the call shows readably, the user's result goes back to the model."""
    tokenizer = default_tokenizer()
    replies, prompts = iter([CALL, "It is 18.", "ok"]), []

    def canned(engine, prompt, params, printer):
        prompts.append(tokenizer.decode(prompt))
        printer.feed(next(replies))
        return "[report]", False

    monkeypatch.setattr(terminal, "stream_reply", canned)
    lines = iter(["weather in Paris?", "18 and cloudy", "/exit"])
    out = io.StringIO()
    chat(None, tokenizer, SamplingParams(), out=out, read=lambda _: next(lines), tools=WEATHER)
    assert '[tool call] get_weather({"city": "Paris"})' in out.getvalue()
    assert "<｜tool" not in out.getvalue()
    assert "### get_weather" in prompts[0]
    assert prompts[1].endswith("<｜tool▁output▁begin｜>18 and cloudy<｜tool▁output▁end｜><｜Assistant｜>")
    assert len(prompts) == 2
