"""CondorBrain: selective state-space models for market forecasting and iron condor policies."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("condorbrain")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
