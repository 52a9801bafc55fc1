"""Everything that reads the bot: its files, processes, environment, broker, UW API and market
calendar, and the facts several checks share (the cache summary, the signal funnel, the freeze
state). Checks judge these facts; they never read them through another check.
"""
