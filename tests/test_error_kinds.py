"""Error kinds read back from messages: how errors cross a gRPC stream (Triton keeps only the message)."""

from __future__ import annotations

import pytest

from tritonrag.errors import InvalidInput, Unavailable, error_from_message


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("the generator's waiting queue is full (256 requests); retry later", Unavailable),
        ("the generator is shutting down", Unavailable),
        ("the generator is stalled: the engine loop made no progress for 121 s", Unavailable),
        ("deadline exceeded: the request ran 300 s, its timeout", Unavailable),
        ("Stub process 'generator_0_0' is not healthy.", Unavailable),
        ("Request for unknown model: 'generator' version 3 is not at ready state", Unavailable),
        ("internal error: RuntimeError('boom')", RuntimeError),
        ("sampling_parameters.top_p must be in (0, 1], got 0", InvalidInput),
        ("text_input is empty", InvalidInput),
    ],
)
def test_messages_map_to_their_kind(message, kind):
    error = error_from_message(message)
    assert type(error) is kind and str(error) == message
