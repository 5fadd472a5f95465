"""The OpenAI Agents SDK runs a tool-using agent and a structured-output agent against the
mock, over the Responses API (its default) and over Chat Completions, streamed and not."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from pydantic import BaseModel

if TYPE_CHECKING:
    from conftest import MockServer  # tests/mock/conftest.py


class City(BaseModel):
    name: str
    population: int


class Report(BaseModel):
    city: City
    tags: list[str]


def model_for(api: str, client: AsyncOpenAI) -> Any:
    if api == "responses":
        return OpenAIResponsesModel("mock-gpt", client)
    return OpenAIChatCompletionsModel("mock-gpt", client)


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
@pytest.mark.parametrize("streamed", [False, True])
def test_agent_calls_its_tool_then_answers(
    mock_server: MockServer, scope: str, api: str, streamed: bool
) -> None:
    set_tracing_disabled(True)
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    async def run() -> str:
        client = AsyncOpenAI(
            api_key="x",
            base_url=f"{mock_server.url}/v1",
            max_retries=0,
            default_headers={"x-mock": f"scope={scope}"},
        )
        agent = Agent(name="a", tools=[get_weather], model=model_for(api, client))
        if streamed:
            stream = Runner.run_streamed(agent, "Weather in Paris?")
            async for _ in stream.stream_events():
                pass
            output = stream.final_output
        else:
            output = (await Runner.run(agent, "Weather in Paris?")).final_output
        await client.close()
        return str(output)

    answer = asyncio.run(run())
    assert cities == ["mock"]
    assert len(answer.split()) == 8
    requests = [r for r in mock_server.get("/_mock/requests") if r["scope"] == scope]
    assert len(requests) == 2  # the tool call, then the answer to its output


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agent_gets_structured_output_that_fits_its_schema(
    mock_server: MockServer, api: str
) -> None:
    set_tracing_disabled(True)

    async def run() -> object:
        client = AsyncOpenAI(api_key="x", base_url=f"{mock_server.url}/v1", max_retries=0)
        agent = Agent(name="a", output_type=Report, model=model_for(api, client))
        result = await Runner.run(agent, "Report on a city.")
        await client.close()
        return result.final_output

    assert asyncio.run(run()) == Report(city=City(name="mock", population=1), tags=[])
