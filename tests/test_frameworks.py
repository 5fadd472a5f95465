"""Agent frameworks built on the openai SDK work through the gateway unchanged."""

from __future__ import annotations

import asyncio

from harness import Gateway, Mock


def test_langchain_chat_openai_invokes_and_streams(gateway: Gateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="gpt-test", base_url=gateway.base_url, api_key="unused", max_retries=0)
    answer = llm.invoke("What is a save point?")
    assert isinstance(answer.content, str) and len(answer.content.split()) == 8
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 8
    streamed = "".join(str(chunk.content) for chunk in llm.stream("What is a save point?"))
    assert streamed == answer.content


def test_openai_agents_sdk_runs_an_agent_on_the_responses_api(gateway: Gateway, mock: Mock) -> None:
    from agents import Agent, RunConfig, Runner, set_default_openai_client, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    # What a user does: swap the SDK's default client; the default model API is Responses.
    set_default_openai_client(client, use_for_tracing=False)
    agent = Agent(name="helper", instructions="Answer briefly.", model="gpt-test")

    async def run() -> tuple[str, int]:
        try:
            result = await Runner.run(agent, "Hello", run_config=RunConfig(tracing_disabled=True))
            streamed = Runner.run_streamed(
                agent, "Hello", run_config=RunConfig(tracing_disabled=True)
            )
            async for _ in streamed.stream_events():
                pass
            assert streamed.final_output == result.final_output
            return str(result.final_output), result.context_wrapper.usage.output_tokens
        finally:
            await client.close()

    before = mock.stats()["by_path"].get("/v1/responses", 0)
    text, output_tokens = asyncio.run(run())
    assert mock.stats()["by_path"]["/v1/responses"] == before + 2
    assert len(text.split()) == 8
    assert output_tokens == 8
