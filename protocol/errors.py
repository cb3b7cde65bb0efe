"""Exceptions raised by the protocol layer. Each carries the GOODBYE code a server would send."""

from __future__ import annotations

from .messages import GoodbyeCode


class ProtocolError(Exception):
    """The peer broke the protocol; the connection cannot continue."""

    code: GoodbyeCode = GoodbyeCode.PROTOCOL_ERROR

    def __init__(self, message: str, code: GoodbyeCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class FrameTooLarge(ProtocolError):
    """A frame header announced a body larger than the reader accepts."""

    code = GoodbyeCode.FRAME_TOO_LARGE


class HandshakeRejected(ProtocolError):
    """The handshake failed: the server refused us, or we refused the peer."""


class RemoteGoodbye(Exception):
    """The peer said goodbye. Not a protocol violation: a normal, explained close."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}" if reason else code)
        self.code = code
        self.reason = reason
