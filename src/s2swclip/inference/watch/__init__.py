"""``s2swclip watch``: an inspection station that scores every image dropped into a folder
exactly once (see :mod:`.station`; the durable state in :mod:`.ledger`, file detection in
:mod:`.detect`, sorting and the ``--on-anomaly`` command in :mod:`.actions`)."""

from .ledger import LEDGER_NAME, RESULTS_NAME, Ledger, ResultsLog
from .station import WatchOptions, WatchStation, WatchStats

__all__ = ["LEDGER_NAME", "RESULTS_NAME", "Ledger", "ResultsLog", "WatchOptions", "WatchStation", "WatchStats"]
