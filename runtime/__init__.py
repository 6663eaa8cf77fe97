"""The serving API edge applications embed: gate → bucket → engine (DESIGN.md §6).

Never imports torch, directly or through anything it imports.
"""
