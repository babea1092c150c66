"""Figures, LaTeX tables and the Markdown/HTML report, built from the tracking store alone (reports.build)."""
