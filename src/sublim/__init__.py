"""sublim: reproduce, measure and audit subliminal learning.

The public API::

    from sublim import load_config, run_experiment
    results = run_experiment(load_config("owl-numbers", ["student.epochs=3"]))

    from sublim import load_audit_config, run_audit
    audit = run_audit(load_audit_config("audit.toml"), Path("runs/audits/mine"))
"""

from sublim.api import run_audit, run_experiment, run_sweep, run_toy
from sublim.audit.config import AuditConfig, load_audit_config
from sublim.core.config import load_config
from sublim.core.errors import SublimError
from sublim.core.store import Store
from sublim.sweep import load_sweep
from sublim.toy import load_toy_config

__version__ = "0.1.0"
__all__ = ["AuditConfig", "SublimError", "Store", "__version__", "load_audit_config", "load_config", "load_sweep",
           "load_toy_config", "run_audit", "run_experiment", "run_sweep", "run_toy"]
