"""mscale: a multi-scale research warehouse for crypto market data."""

__version__ = "0.1.0"
