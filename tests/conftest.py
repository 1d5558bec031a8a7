import pytest

from nanoseek.infer.forward import set_compile


@pytest.fixture(autouse=True, scope="session")
def eager_engines():
    """Engines decode eagerly here unless a test asks for compiling (EngineConfig(compile=True)): compiling a step
    costs seconds per model shape, and the suite builds dozens of shapes. tests/infer/test_forward.py holds the
    compiled step to the eager one."""
    set_compile(False)
    yield
    set_compile(True)
