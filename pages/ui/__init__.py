"""Streamlit glue shared by the pages: cached loaders and small widgets.

Lives beside the pages (not in ``cxr_core``) because it imports Streamlit. The
folder is not a page: Streamlit only turns ``pages/*.py`` into pages.

Importing it (every page does) also keeps uploads out of the server log: pydicom may
quote a malformed header value, such as a patient name, in a log record or a warning.
"""

import logging
import warnings

logging.getLogger("pydicom").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
