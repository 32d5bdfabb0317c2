"""The PACS admin's web dashboard: overview, studies, one study, failures, and the actions retry, force-complete
and re-send. Served by the node process (roles ``all`` and ``dashboard``) from the node's own database; see
``app.py`` for the pages and their guards, ``auth.py`` for login and CSRF, ``queries.py`` for what is read and
``actions.py`` for what is changed."""
from __future__ import annotations

from dicomnode.dashboard.server import DashboardServer

__all__ = ["DashboardServer"]
