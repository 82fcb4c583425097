"""Acquisition-side tools: send frames, receive results, steer the service, record streams."""

from rewardscope.clients.client import ControlClient, InstrumentClient, ResultsClient

__all__ = ["ControlClient", "InstrumentClient", "ResultsClient"]
