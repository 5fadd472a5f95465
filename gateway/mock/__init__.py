"""The fake OpenAI-compatible provider: `savepoint mock`, the gateway's default provider, and
the scripted upstream of the test suite.

    knobs.py          Knobs, KnobError, the flag, `x-mock` header and JSON parsers (one table),
                      ServerKnobs (the defaults `POST /_mock/knobs` replaces)
    faults.py         pure: which fault request n gets, and what it does to the answer's bytes
    plan.py           Call (a builder's input) and Plan = Body | Events (its output)
    synth.py          pure: deterministic words, JSON placeholders, token estimates
    tools.py          pure: which function tool to call, with which arguments
    chat.py, completions.py, responses_api.py, embeddings.py, catalog.py
                      pure builders, one per OpenAI endpoint
    wire.py           SSE framing and OpenAI error bodies
    stats.py          the per-app ledger: counts, request numbers, recent requests
    delivery.py       the only module that writes to sockets; carries out faults
    server.py         routes and the order of a request; `build_mock_app`

Imports point one way: server -> delivery -> faults -> (plan, knobs); server -> the
builders -> tools -> synth; builders -> plan, wire. `knobs` and `stats` import nothing here.
Nothing is created at import time: all state lives in the app `build_mock_app` returns.
"""

from .knobs import (
    KnobError,
    Knobs,
    add_knob_arguments,
    knobs_from_args,
    parse_knob_header,
    parse_knob_mapping,
)
from .server import build_mock_app

__all__ = [
    "KnobError",
    "Knobs",
    "add_knob_arguments",
    "build_mock_app",
    "knobs_from_args",
    "parse_knob_header",
    "parse_knob_mapping",
]
