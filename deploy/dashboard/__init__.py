"""The web dashboard for a clinic's privacy officer, the coordinator and researchers.

``oralfed dashboard serve`` runs it: :mod:`.service` builds a clinic's or the coordinator's
site, :mod:`.app` serves it, :mod:`.clinic_view` and :mod:`.coordinator_view` read what it
shows, :mod:`.charts` draws it, :mod:`.tokens` and :mod:`.sessions` say who may see it.
"""

from oralfed.deploy.dashboard.app import ClinicSite, CoordinatorSite, create_dashboard
from oralfed.deploy.dashboard.service import clinic_dashboard, coordinator_dashboard
from oralfed.deploy.dashboard.tokens import create_clinic_token

__all__ = [
    "ClinicSite",
    "CoordinatorSite",
    "clinic_dashboard",
    "coordinator_dashboard",
    "create_clinic_token",
    "create_dashboard",
]
