import pytest

from nanoseek.compiling import set_compile


@pytest.fixture(autouse=True, scope="session")
def eager_engines():
    """Training and engines run eagerly here unless a test asks for compiling (EngineConfig(compile=True),
    compile_blocks): compiling costs seconds per model shape, and the suite builds dozens of shapes.
    tests/infer/test_forward.py and tests/train/test_loop.py hold the compiled paths to the eager ones."""
    set_compile(False)
    yield
    set_compile(True)
