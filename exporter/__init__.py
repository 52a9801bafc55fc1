"""trading-readiness: is the trading bot able to trade, right now, and why not?"""

__version__ = "0.1.0"
