"""Figures and the self-contained HTML report of a run."""

from graftlens.report.html import REPORT_NAME, write_report

__all__ = ["REPORT_NAME", "write_report"]
