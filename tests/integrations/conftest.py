"""The integrations' tests run against the real libraries, in the environment ``make
test-integrations`` builds, which sets ``LIT_RL_INTEGRATIONS=1``. Elsewhere (``make test``,
``make test-vllm``) the libraries are not installed and these modules are not collected."""

import os

collect_ignore_glob = [] if os.environ.get("LIT_RL_INTEGRATIONS") == "1" else ["test_*.py"]
