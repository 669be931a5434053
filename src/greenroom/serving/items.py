"""Small value types of the serving path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class RequestTicket:
    """One request's items still waiting in a queue (the queue bounds count requests), and
    who sent it: batches share their slots between principals."""

    principal: str = ""
    waiting: int = 0


@dataclass(eq=False)
class EmbeddingItem:
    """One input of a request: its token ids and the future its vector is delivered on."""

    token_ids: np.ndarray
    future: asyncio.Future[np.ndarray]
    ticket: RequestTicket
    attempts: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def principal(self) -> str:
        return self.ticket.principal

    def is_abandoned(self) -> bool:
        """The client went away (its future was cancelled): skip before spending compute."""
        return self.future.done()


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) float32
    prompt_tokens: int
    embedding_space: str = field(default="")
    cached: int = 0  # inputs answered from the revision's embedding cache (serving.cache)
