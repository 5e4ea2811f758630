"""The code location: `dagster dev` in the repo root, or `dagster api grpc -f definitions.py`."""

import prodg_assets

defs = prodg_assets.build_defs()
