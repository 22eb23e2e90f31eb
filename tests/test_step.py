import pytest

from open_lth.foundations.errors import UserError
from open_lth.foundations.step import Step


@pytest.mark.parametrize(
    "text,iteration",
    [
        ("50000it", 50000),
        ("160ep", 160 * 391),
        ("2ep100it", 2 * 391 + 100),
        ("0it", 0),
        ("1ep", 391),
    ],
)
def test_parse(text: str, iteration: int) -> None:
    step = Step.from_str(text, 391)
    assert step.iteration == iteration
    assert step.ep == iteration // 391 and step.it == iteration % 391


@pytest.mark.parametrize("text", ["12xyz", "", "it", "ep", "1.5ep", "-3it", "100", "3it2ep"])
def test_malformed(text: str) -> None:
    with pytest.raises(UserError, match="malformed"):
        Step.from_str(text, 100)


def test_order_and_string() -> None:
    a, b = Step.from_str("1ep", 100), Step.from_str("150it", 100)
    assert a < b and b > a and a == Step(100, 100) and a == 100
    assert str(b) == "150it"
    with pytest.raises(ValueError):
        _ = a < Step(1, 7)
