"""One-shot tools on top of the checks: the signal probe, ``verify``, the bot-root and config
preflight, and the table and Markdown renderings of reports and the catalog.
"""
