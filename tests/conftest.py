import pytest

from tests.helpers.tiny import tiny_llava


@pytest.fixture(scope="session")
def llava():
    return tiny_llava()
