"""Every renderer: experiment and misalignment runs, audits, the toy experiment. Each reads result
files only, so it renders old runs too."""

from sublim.report.audit import render_audit_report
from sublim.report.experiment import render_report
from sublim.report.sweep import render_sweep_report
from sublim.report.toy import render_toy_report

__all__ = ["render_audit_report", "render_report", "render_sweep_report", "render_toy_report"]
