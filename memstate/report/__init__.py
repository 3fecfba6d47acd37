"""Rendering results for people and programs: text, JSON, self-contained HTML (page, svg), the check and
bisect reports, and the one-screen summary of a trace. Reports format results; they never decide them."""
