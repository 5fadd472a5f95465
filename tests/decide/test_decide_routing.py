import pytest

from gateway.config.schema import ModelSpec, Policy, ServerSpec, StoreSpec, TargetSpec, Timeouts
from gateway.decide.routing import resolve_model, visible_models
from gateway.errors import ModelNotAllowed, ModelNotFound, shape_of
from gateway.model import ANONYMOUS, Principal


def _policy() -> Policy:
    target = TargetSpec("p", "up", Timeouts())
    models = {name: ModelSpec(name, (target,)) for name in ("a", "b")}
    return Policy(
        source="t.yaml",
        server=ServerSpec(),
        store=StoreSpec(),
        providers={},
        models=models,
        clients={},
        unavailable={"gpt-4o": "provider 'openai' is switched off: OPENAI_API_KEY is not set"},
    )


def test_allowed_model_resolves_to_its_spec() -> None:
    assert resolve_model(_policy(), Principal("c", frozenset({"a"})), "a").name == "a"


def test_model_outside_the_clients_list_is_403() -> None:
    with pytest.raises(ModelNotAllowed) as caught:
        resolve_model(_policy(), Principal("c", frozenset({"a"})), "b")
    assert shape_of(caught.value).status == 403
    assert caught.value.param == "model"


def test_unknown_model_is_404_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve_model(_policy(), ANONYMOUS, "nope")
    assert (shape_of(caught.value).status, shape_of(caught.value).code) == (404, "model_not_found")


def test_model_of_a_switched_off_provider_says_how_to_switch_it_on() -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve_model(_policy(), ANONYMOUS, "gpt-4o")
    assert "OPENAI_API_KEY" in caught.value.message


def test_clients_see_only_their_models() -> None:
    assert [m.name for m in visible_models(_policy(), Principal("c", frozenset({"b"})))] == ["b"]
    assert [m.name for m in visible_models(_policy(), ANONYMOUS)] == ["a", "b"]
