"""Home Assistant's Wyoming protocol for this server's voices: describe, synthesize, streams."""

from tts_server.wyoming.server import wyoming_context

__all__ = ["wyoming_context"]
