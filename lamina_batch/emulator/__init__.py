"""The Lamina-compatible emulator: an HTTP server with the demo catalogue, lifecycles, PNGs, webhooks,
rate limit and seeded faults. It imports nothing from the client side of lamina-batch.
"""

from lamina_batch.emulator.config import BUILTIN_APPS, AppDef, EmulatorConfig, Faults, OutputDef, ParamDef
from lamina_batch.emulator.oauth import OAuthConfig, OAuthStats, TokenPair
from lamina_batch.emulator.server import Emulator, banner, serve, serve_forever
from lamina_batch.emulator.stats import EmulatorStats, RequestLogEntry, WebhookAttempt

__all__ = [
    "BUILTIN_APPS",
    "AppDef",
    "Emulator",
    "EmulatorConfig",
    "EmulatorStats",
    "Faults",
    "OAuthConfig",
    "OAuthStats",
    "OutputDef",
    "ParamDef",
    "RequestLogEntry",
    "TokenPair",
    "WebhookAttempt",
    "banner",
    "serve",
    "serve_forever",
]
