"""Observability: activity rows, Prometheus metrics, captures and live events.

Below the lifecycle and the hop (both report here), above nothing but the config.
"""

from llamaswap_docker.observe.activity import ActivityLog, ActivityRow
from llamaswap_docker.observe.bus import EventBus, Subscription
from llamaswap_docker.observe.captures import Capture, CaptureBuffer
from llamaswap_docker.observe.prometheus import Metrics, StateReading
from llamaswap_docker.observe.recorder import CLIENT_GONE, Recorder, RecordingOff, Trace
from llamaswap_docker.observe.usage import Usage, UsageScanner

__all__ = [
    "CLIENT_GONE", "ActivityLog", "ActivityRow", "Capture", "CaptureBuffer", "EventBus",
    "Metrics", "Recorder", "RecordingOff", "StateReading", "Subscription", "Trace", "Usage",
    "UsageScanner",
]
